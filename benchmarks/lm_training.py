"""Game-LM training throughput (tokens/s): today's settings vs the options `lm train` offers.

    .venv/bin/python benchmarks/lm_training.py                      # the bundled Othello shape
    .venv/bin/python benchmarks/lm_training.py --n-layer 6 --n-embd 192 --n-head 6
    .venv/bin/python benchmarks/lm_training.py --tiny               # seconds; what `make test` runs

Every variant trains the same model from the same weights on the same batches (one optimiser
step = forward, backward, clip, AdamW); the figure is input tokens per second of wall time
after warm-up steps (torch.compile compiles during warm-up), and each line gives its ratio to
the baseline measured in this run: fp32, eager, next-move targets, torch's default AdamW.
Variants: the legal-move-distribution objective (same model, targets (B, T, V) instead of
(B, T)), fused AdamW, torch.compile, smaller batches, and bf16 autocast (fast only where the
CPU has native bf16 instructions: AVX-512 BF16 or AMX; elsewhere it is emulated and far
slower, so it runs only --slow-steps).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boardlens.games.othello import lm_data  # noqa: E402
from boardlens.lm.model import GPT, GPTConfig  # noqa: E402
from boardlens.lm.train import train_step  # noqa: E402

# name: (objective, compile, bf16 autocast, fused AdamW, games per step; 0 = --batch-games).
# The bf16 variant runs --slow-steps. The last line is what the bundled model trains with.
VARIANTS = {
    "baseline (fp32, eager, next-move)": ("next", False, False, False, 0),
    "legal-move targets": ("legal", False, False, False, 0),
    "legal + fused AdamW": ("legal", False, False, True, 0),
    "legal + bf16 autocast": ("legal", False, True, False, 0),
    "legal + fused AdamW + compile": ("legal", True, False, True, 0),
    "  the same, 64 games per step": ("legal", True, False, True, 64),
}


def tokens_per_s(cfg: GPTConfig, batch_games: int, objective: str, compiled: bool, bf16: bool,
                 fused: bool, warmup: int, steps: int) -> float:
    torch.manual_seed(0)
    model = GPT(cfg)
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), fused=fused or None)
    make = lm_data.legal_target_batch if objective == "legal" else lm_data.training_batch
    rng = np.random.default_rng(0)
    batches = [make(rng, batch_games) for _ in range(4)]  # generation is not what is timed
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        x, y = batches[i % len(batches)]
        train_step(model, forward, opt, x, y, bf16)
    return steps * batch_games * x.shape[1] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-layer", type=int, default=8)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-head", type=int, default=8)
    ap.add_argument("--batch-games", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    ap.add_argument("--slow-steps", type=int, default=1,
                    help="timed steps of the bf16 variant (emulated bf16 is ~20x slower on AVX2 CPUs)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--tiny", action="store_true", help="a 2x32 model, 2 steps: checks the code runs")
    args = ap.parse_args()
    if args.tiny:
        args.n_layer, args.n_embd, args.n_head, args.batch_games, args.steps, args.warmup = 2, 32, 2, 8, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = GPTConfig(vocab_size=61, block_size=59, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    print(f"GPT {args.n_layer}x{args.n_embd} ({GPT(cfg).num_params() / 1e6:.2f}M parameters), "
          f"{args.batch_games} games x 59 tokens per step, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    base = None
    for name, (objective, compiled, bf16, fused, games) in VARIANTS.items():
        if compiled and args.tiny:
            continue  # compiling takes a minute: not for the tiny mode
        steps, warmup = (args.slow_steps, min(args.warmup, 1)) if bf16 else (args.steps, args.warmup)
        rate = tokens_per_s(cfg, games or args.batch_games, objective, compiled, bf16, fused, warmup, steps)
        base = base or rate
        print(f"{name:<36} {rate:>10,.0f} tokens/s   {rate / base:5.2f}x baseline", flush=True)


if __name__ == "__main__":
    main()

"""The data paths on whatever device is here, beside their roofline: producer alone, trainer
alone, `up` end to end.

    .venv/bin/python benchmarks/gpu_pipeline.py [--model models/othello-gpt] [--device auto]
    .venv/bin/python benchmarks/gpu_pipeline.py --tiny      # seconds; what the tests run

It says which device it measured (CUDA when present, else the CPU) and prints, in one run:
  - the device's matmul peak, fp32 and bf16 (a square product timed here: the roofline's roof);
  - on CUDA, host->device copies from pageable vs pinned memory (what services/staging.py buys);
  - producer alone (its service loop: games, forward, staging, encode, send) in tokens/s, fp32
    and bf16 on the wire, beside its roofline: the forward's FLOPs per token (blocks up to the
    SAE layer: 24 d^2 for the projections and MLP, 2 T d for causal attention) / peak, and the
    link: bytes per token on the wire (activations, tokens, labels; encoded from real games)
    and the tokens/s a 10 and a 100 Gbit/s link carry;
  - trainer alone (2 SAEs, the default sweep) in steps/s and tokens/s, beside its roofline:
    12 d m FLOPs per token per SAE (encoder and decoder, forward and backward) / peak;
  - `up` end to end, and its ratio to the slower component (the baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_throughput import producer_tokens_per_s, trainer_steps_per_s, up_tokens_per_s  # noqa: E402

from boardlens.services.config import DEFAULT_MODEL  # noqa: E402


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """FLOP/s of an n x n x n product on this device and dtype (best of reps)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):  # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def copy_rates(device: torch.device, mib: int = 64) -> dict[str, float]:
    """Host -> device GB/s from pageable and from pinned memory (CUDA only)."""
    out = {}
    for pinned in (False, True):
        host = torch.empty(mib << 18, dtype=torch.float32, pin_memory=pinned)
        dev = torch.empty_like(host, device=device)
        dev.copy_(host, non_blocking=pinned)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            dev.copy_(host, non_blocking=pinned)
        torch.cuda.synchronize()
        out["pinned" if pinned else "pageable"] = 10 * host.nbytes / (time.perf_counter() - t0) / 1e9
    return out


def wire_sample(game: str, d: int, itemsize: int, batch_games: int) -> tuple[float, int]:
    """(bytes on the wire per token, padded length T): one real batch of the game's games, encoded."""
    from boardlens.games.stream import GameStream
    from boardlens.protocol import ActivationBatch, encode_batch

    dtype = {4: torch.float32, 2: torch.bfloat16}[itemsize]
    stream = GameStream(game, batch_games, 0, "random", 0, "", start=0)
    try:
        g = stream.next()
    finally:
        stream.close()
    B, T = g.tokens.shape
    batch = ActivationBatch(
        acts=torch.zeros(B, T, d, dtype=dtype), tokens=torch.from_numpy(g.tokens),
        game_ids=torch.arange(B), lengths=torch.from_numpy(g.lengths),
        label_pos=torch.from_numpy(g.label_pos), labels={k: torch.from_numpy(v) for k, v in g.labels.items()},
        epoch="00", seq=0, game=game, model="m", layer=0)
    return sum(memoryview(f).nbytes for f in encode_batch(batch)) / int(g.lengths.sum()), T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:i]")
    ap.add_argument("--tokens", type=int, default=300_000)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eval-games", type=int, default=50)
    ap.add_argument("--tiny", action="store_true", help="10,000 tokens, 256 latents, 5 steps: checks the code runs")
    args = ap.parse_args()
    if args.tiny:
        args.tokens, args.d_sae, args.batch, args.steps, args.eval_games = 10_000, 256, 256, 5, 10
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    threads = 1 if (os.cpu_count() or 1) <= 2 else 2
    torch.set_num_threads(threads)
    name = torch.cuda.get_device_name(device) if cuda else "CPU (no GPU present)"
    print(f"device: {device} = {name}; {threads} torch thread(s) per component")

    n = 256 if args.tiny else (4096 if cuda else 1024)
    peak = {dt: matmul_peak(device, getattr(torch, dt), n, 1 if args.tiny else 5) for dt in ("float32", "bfloat16")}
    print(f"matmul peak ({n}^3): fp32 {peak['float32'] / 1e9:,.0f} GFLOP/s, bf16 {peak['bfloat16'] / 1e9:,.0f} GFLOP/s")
    if cuda:
        rates = copy_rates(device, 8 if args.tiny else 64)
        print(f"host->device copies: pageable {rates['pageable']:.1f} GB/s, pinned {rates['pinned']:.1f} GB/s "
              f"({rates['pinned'] / rates['pageable']:.2f}x)")

    cfg = json.loads((Path(args.model) / "config.json").read_text())
    gpt, game = cfg["gpt"], cfg["game"]
    d, layers = gpt["n_embd"], cfg.get("sae_layer", 0) + 1
    from boardlens.registry import GAMES

    batch_games = GAMES[game].default_batch_games
    T = wire_sample(game, d, 4, batch_games)[1]
    flops_tok = layers * (24 * d * d + 2 * T * d)
    fwd_dtype = "bfloat16" if cuda else "float32"  # bf16 is emulated (slow) on a CPU without it
    prod = {}
    for wire in ("float32", "bfloat16"):
        prod[wire] = producer_tokens_per_s(args.model, args.tokens, threads, str(device), fwd_dtype, wire)
        per_tok = wire_sample(game, d, 4 if wire == "float32" else 2, batch_games)[0]
        print(f"producer alone, forward {fwd_dtype}, {wire} on the wire: {prod[wire]:,.0f} tokens/s; "
              f"{per_tok:,.0f} B/token on the wire ({prod[wire] * per_tok / 1e6:,.1f} MB/s; a 10 Gbit/s link "
              f"carries {1.25e9 / per_tok:,.0f} tokens/s, 100 Gbit/s {12.5e9 / per_tok:,.0f})")
    roof = peak[fwd_dtype] / flops_tok
    print(f"producer roofline: {flops_tok / 1e6:.2f} MFLOP/token ({layers} blocks of d={d}, T={T}) -> "
          f"{roof:,.0f} tokens/s at the {fwd_dtype} peak; measured {max(prod.values()) / roof:.2f} of it "
          "(the rest: game generation, labelling, encode and send on the host)")

    sps = trainer_steps_per_s(d, args.d_sae, args.batch, args.steps, threads, str(device))
    trn = sps * args.batch
    sae_flops = 2 * 12 * d * args.d_sae  # 2 SAEs
    troof = peak["float32"] / sae_flops
    print(f"trainer alone: {sps:.2f} steps/s = {trn:,.0f} tokens/s (2 SAEs, d={d}, {args.d_sae} latents, "
          f"batch {args.batch}); roofline {sae_flops / 1e6:.1f} MFLOP/token -> {troof:,.0f} tokens/s at the fp32 "
          f"peak; measured {trn / troof:.2f} of it")

    e2e, wall = up_tokens_per_s(args.model, args.tokens, args.d_sae, args.batch, args.eval_games,
                                str(device) if cuda else None)
    slower = min(max(prod.values()), trn)
    print(f"up end to end: {e2e:,.0f} tokens/s trained ({args.tokens:,} tokens in {wall:.0f} s); ratio to the "
          f"slower component (the baseline, {slower:,.0f} tokens/s) = {e2e / slower:.2f}")


if __name__ == "__main__":
    main()

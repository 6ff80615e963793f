"""SAE trainer speed: ours vs dictionary_learning's, and a sweep in one process vs K processes.

    .venv/bin/python benchmarks/sae_trainers.py [--d 512] [--d-sae 4096] [--batch 4096] [--steps 6]
                                                [--sweep-k 4] [--sweep-steps 6] [--skip-sweep]
    .venv/bin/python benchmarks/sae_trainers.py --tiny    # seconds; what the tests run

1. Steps/s of each of our six trainers and of dictionary_learning's matching trainer (the real
   package, 0.1.0), same shapes, same initial weights, same batches, same threads, measured
   alternately in this one run; ratio = ours / theirs (target >= 1.0). Ours also with
   precision=bf16 (bfloat16 autocast): bf16/fp32 and bf16/dictionary_learning (fp32). bf16 only
   pays where matmuls have bf16 units (AVX-512 BF16, AMX, GPUs); elsewhere torch emulates it. Our step includes the
   statistics the service exports every step (L0, variance explained, dead fraction).
   dictionary_learning runs in squared-error mode without sparsity warmup, as ours here.
   p-anneal and Gated+p-anneal are timed mid-anneal (p = 0.7, paper-length schedule): there
   dictionary_learning evaluates the next p's penalty on every step after the first update,
   ours only in the `queue_len` steps before each update (the only ones whose values are used).
2. Sweep: K Standard SAEs trained by one `boardlens train` process (the K share every batch:
   one receive, one decode, one shuffle, one host-to-device copy) vs K `boardlens train`
   processes with one SAE each, all fed by a real ZeroMQ publisher of the same messages.
   Wall time from the first message until every SAE reached --sweep-steps; speed-up =
   K processes (the baseline) / one process. Threads: the one process gets all cores; the K
   processes split them (at least 1 each).
Without dictionary_learning, part 1 is skipped (and said so) and the sweep still runs.
--tiny: d=64, 256 latents, batches of 256, 2 timed steps per trainer, a sweep of 2 SAEs x 2
steps (the same code; fixed per-step costs weigh more at this size).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boardlens.registry import TRAINERS  # noqa: E402

# kind -> (dictionary_learning module.class, its kwargs, our kwargs)
# The annealing trainers are timed mid-anneal as in a paper-length run: a fractional p (0.7,
# as after a few updates) and the paper's 36,621-step schedule, so each p lasts ~3,600 steps.
PAPER_STEPS = 36_621
ANNEAL = dict(anneal_start=1, p_start=0.7, p_end=0.2, n_sparsity_updates=10, sparsity_queue_length=10,
              sparsity_function="Lp^p")
PAIRS = {
    "standard": ("standard.StandardTrainer", dict(l1_penalty=0.05, sparsity_warmup_steps=None), dict(penalty=0.05)),
    "p_anneal": ("p_anneal.PAnnealTrainer", dict(initial_sparsity_penalty=0.05, sparsity_warmup_steps=None, **ANNEAL),
                 dict(penalty=0.05, anneal_start=1, p_start=0.7)),
    "gated": ("gdm.GatedSAETrainer", dict(l1_penalty=0.05, sparsity_warmup_steps=None), dict(penalty=0.05)),
    "gated_anneal": ("gated_anneal.GatedAnnealTrainer",
                     dict(initial_sparsity_penalty=0.05, sparsity_warmup_steps=None, **ANNEAL),
                     dict(penalty=0.05, anneal_start=1, p_start=0.7)),
    "topk": ("top_k.TopKTrainer", dict(k=32), dict(k=32)),
    "batch_topk": ("batch_top_k.BatchTopKTrainer", dict(k=32), dict(k=32)),
}


def dictionary_learning() -> bool:
    """Whether dictionary_learning imports (nnsight, which only its LM buffer needs, is stubbed)."""
    sys.modules.setdefault("nnsight", types.SimpleNamespace(LanguageModel=None))
    try:
        importlib.import_module("dictionary_learning")
        return True
    except ImportError:
        return False


def compare(kind: str, d: int, d_sae: int, batch: int, steps: int, data: torch.Tensor) -> tuple[float, float, float]:
    """Steps/s of (ours fp32, ours bf16 autocast, dictionary_learning), timed in turns."""
    path, their_kw, our_kw = PAIRS[kind]
    module, cls = path.rsplit(".", 1)
    their_cls = getattr(importlib.import_module(f"dictionary_learning.trainers.{module}"), cls)
    total = steps + 2
    theirs = their_cls(steps=PAPER_STEPS, activation_dim=d, dict_size=d_sae, layer=0, lm_name="bench", lr=1e-3,
                       warmup_steps=1, device="cpu", seed=0, **their_kw)
    ours = {p: TRAINERS[kind]("bench", d, d_sae=d_sae, total_steps=PAPER_STEPS, lr=1e-3, warmup_steps=1,
                              recon="mse", precision=p, **our_kw) for p in ("fp32", "bf16")}
    for tr in ours.values():
        tr.ae.load_state_dict(theirs.ae.state_dict())
    times = {"fp32": 0.0, "bf16": 0.0, "theirs": 0.0}
    for step in range(total):
        x = data[(step % 4) * batch : (step % 4 + 1) * batch]
        order = list(times)[step % 3:] + list(times)[:step % 3]  # rotate who goes first
        for who in order:
            t0 = time.perf_counter()
            if who == "theirs":
                theirs.update(step, x)
            else:
                ours[who].update(x)
            if step >= 2:  # the first two steps warm up allocators and (TopK) the median init
                times[who] += time.perf_counter() - t0
    return steps / times["fp32"], steps / times["bf16"], steps / times["theirs"]


def sweep_wall_time(k: int, procs_k: int, d: int, d_sae: int, batch: int, steps: int, threads: int) -> float:
    """Seconds for K SAEs to reach `steps` when trained by `procs_k` trainer processes."""
    from boardlens.protocol import Publisher, TransportConfig, encode_batch, new_epoch
    from boardlens.protocol.batch import ActivationBatch
    from boardlens.services.up import free_ports, spawn, stop_processes

    penalties = [f"{0.01 * (i + 1):g}" for i in range(k)]
    groups = [penalties[i::procs_k] for i in range(procs_k)]
    data, *ports = free_ports(1 + 2 * procs_k)
    pub = Publisher(f"tcp://127.0.0.1:{data}", None, TransportConfig(send_timeout_ms=600_000))
    epoch, g = new_epoch(), torch.Generator().manual_seed(0)
    B, T = 64, 64
    messages = [encode_batch(ActivationBatch(
        acts=torch.randn(B, T, d, generator=g), tokens=torch.zeros(B, T, dtype=torch.long), game_ids=torch.arange(B),
        lengths=torch.full((B,), T, dtype=torch.int16), label_pos=torch.zeros(B, 1, dtype=torch.int16), labels={},
        epoch=epoch, seq=i, game="othello", model="bench", layer=0)) for i in range(8)]
    procs = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for i, group in enumerate(groups):
                args = ["--connect", f"tcp://127.0.0.1:{data}", "--snapshot-bind", f"tcp://127.0.0.1:{ports[2 * i]}",
                        "--metrics-port", "0", "--run-dir", f"{tmp}/p{i}", "--d-sae", str(d_sae),
                        "--batch-size", str(batch), "--buffer-activations", str(2 * batch), "--steps", str(steps),
                        "--warmup-steps", "1", "--threads", str(threads), "--checkpoint-every", "1000000",
                        "--snapshot-every", "1000000", "--resume", "never"]
                for p in group:
                    args += ["--saes", f"standard:penalty={p}"]
                procs[f"p{i}"] = spawn("train", args, Path(tmp) / f"p{i}.log")
            if not pub.wait_for_subscribers(procs_k, 120):
                raise RuntimeError("trainers never subscribed: " + " ".join(
                    (Path(tmp) / f"p{i}.log").read_text()[-500:] for i in range(procs_k)))
            t0, seq = time.perf_counter(), 0
            while any(p.poll() is None for p in procs.values()):
                frames = messages[seq % len(messages)]
                pub.send(frames)  # lossless: blocks while the slowest trainer is full
                seq += 1
            elapsed = time.perf_counter() - t0
            bad = {n: p.returncode for n, p in procs.items() if p.returncode != 0}
            if bad:
                raise RuntimeError(f"trainers failed: {bad}")
            return elapsed
        finally:
            stop_processes(procs, timeout_s=30)
            pub.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=6, help="Timed steps per trainer (after 2 warm-up steps).")
    ap.add_argument("--kinds", default=",".join(PAIRS))
    ap.add_argument("--sweep-k", type=int, default=4)
    ap.add_argument("--sweep-steps", type=int, default=6)
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--tiny", action="store_true",
                    help="d=64, 256 latents, batch 256, 2 steps, a sweep of 2 x 2 steps: checks the code runs")
    args = ap.parse_args()
    if args.tiny:
        args.d, args.d_sae, args.batch, args.steps, args.sweep_k, args.sweep_steps = 64, 256, 256, 2, 2, 2
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    print(f"# {cores} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"d={args.d}, {args.d_sae} latents, batch {args.batch}")
    if dictionary_learning():
        data = torch.randn(4 * args.batch, args.d, generator=torch.Generator().manual_seed(0))
        print(f"{'trainer':<14}{'ours steps/s':>14}{'dictionary_learning (baseline)':>32}{'ratio':>8}"
              f"{'ours bf16':>11}{'bf16/fp32':>11}{'bf16/dl':>9}")
        for kind in args.kinds.split(","):
            ours, bf16, theirs = compare(kind, args.d, args.d_sae, args.batch, args.steps, data)
            print(f"{kind:<14}{ours:>14.3f}{theirs:>32.3f}{ours / theirs:>8.2f}{bf16:>11.3f}{bf16 / ours:>11.2f}"
                  f"{bf16 / theirs:>9.2f}", flush=True)
    else:
        print("skipped: ours vs dictionary_learning (not installed: make venv, or "
              "pip install --no-deps dictionary-learning)")
    if args.skip_sweep:
        return
    k = args.sweep_k
    one = sweep_wall_time(k, 1, args.d, args.d_sae, args.batch, args.sweep_steps, cores)
    many = sweep_wall_time(k, k, args.d, args.d_sae, args.batch, args.sweep_steps, max(1, cores // k))
    print(f"sweep of {k} standard SAEs x {args.sweep_steps} steps: one process {one:.1f} s, "
          f"{k} processes (the baseline) {many:.1f} s, speed-up {many / one:.2f}x")


if __name__ == "__main__":
    main()

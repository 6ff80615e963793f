"""Producer tokens/s alone, trainer steps/s alone, and end-to-end `boardlens up` tokens/s.

    .venv/bin/python benchmarks/pipeline_throughput.py [--tokens 300000] [--d-sae 4096] [--batch 2048]
    .venv/bin/python benchmarks/pipeline_throughput.py --tiny    # seconds; what the tests run

All three are measured in this one run on this machine with the same settings; the target is
end-to-end >= 0.8 x the slower of the producer and the trainer (the baseline of the ratio).
Threads: each component alone gets the threads it gets inside `up` (1 each on 2 cores), so the
ratio compares like with like. --tiny: 10,000 tokens, 256 latents, batches of 256, 5 timed
trainer steps, 10 + 10 eval games (the same code; start-up weighs on so short a run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boardlens.services.config import DEFAULT_MODEL, ProducerConfig, TrainerConfig  # noqa: E402
from boardlens.services.producer import Producer  # noqa: E402
from boardlens.services.telemetry import Telemetry  # noqa: E402
from boardlens.services.trainer import SweepTrainer, TrainerMetrics  # noqa: E402
from boardlens.services.up import run as up_run  # noqa: E402


def producer_tokens_per_s(model: str, tokens: int, threads: int, device: str = "cpu",
                          dtype: str = "float32", wire_dtype: str = "") -> float:
    """The producer service's own loop (games, forward, staging, encode, send; no subscriber)."""
    torch.set_num_threads(threads)
    cfg = ProducerConfig(model=model, bind="tcp://127.0.0.1:0", bind_lossy="tcp://127.0.0.1:0",
                         max_tokens=tokens, metrics_port=0, device=device, dtype=dtype, wire_dtype=wire_dtype)
    prod = Producer(cfg, Telemetry("bench-producer", 0))
    try:
        t0 = time.perf_counter()
        n = prod.run(threading.Event())
        return n / (time.perf_counter() - t0)
    finally:
        prod.close()


def trainer_steps_per_s(d_in: int, d_sae: int, batch: int, steps: int, threads: int,
                        device: str = "cpu") -> float:
    """Sweep steps (the default 2 SAEs) on batches already on the device."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainerConfig(run_dir=tmp, d_sae=d_sae, batch_size=batch, buffer_activations=4 * batch,
                            steps=10**9, warmup_steps=10, metrics_port=0, device=device)
        sweep = SweepTrainer(cfg, d_in, TrainerMetrics(Telemetry("bench-trainer", 0)), torch.device(device))
        xs = [torch.randn(batch, d_in, device=device) for _ in range(4)]
        sweep.train_step(xs[0])  # warm-up
        t0 = time.perf_counter()
        for i in range(steps):
            sweep.train_step(xs[i % 4])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        sweep.close()
        return steps / dt


def up_tokens_per_s(model: str, tokens: int, d_sae: int, batch: int, eval_games: int,
                    device: str | None = None) -> tuple[float, float]:
    """(tokens trained per second, wall seconds) of a whole `up` run."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        code = up_run(tokens=tokens, run_dir=tmp, quiet=True, model=model, d_sae=d_sae,
                      batch_size=batch, train_games=eval_games, test_games=eval_games, device=device)
        wall = time.perf_counter() - t0
        if code:
            raise SystemExit(f"up failed ({code}); logs in {tmp}/logs")
        lines = [json.loads(x) for x in open(Path(tmp) / "train.jsonl")]
        steps = lines[-1]["step"]
        # Steady state: from the first logged step to the last (excludes start-up and the final eval).
        span = lines[-1]["time"] - lines[0]["time"]
        return (steps - lines[0]["step"]) * batch / span, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--tokens", type=int, default=300_000)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eval-games", type=int, default=50, help="train and test games of up's evaluator")
    ap.add_argument("--tiny", action="store_true",
                    help="10,000 tokens, 256 latents, batch 256, 5 steps: checks the code runs")
    args = ap.parse_args()
    if args.tiny:
        args.tokens, args.d_sae, args.batch, args.steps, args.eval_games = 10_000, 256, 256, 5, 10
    threads = 1 if (os.cpu_count() or 1) <= 2 else 2
    d_in = json.loads((Path(args.model) / "config.json").read_text())["gpt"]["n_embd"]
    prod = producer_tokens_per_s(args.model, args.tokens, threads)
    print(f"producer alone: {prod:,.0f} tokens/s ({threads} thread(s))")
    sps = trainer_steps_per_s(d_in, args.d_sae, args.batch, args.steps, threads)
    trn = sps * args.batch
    print(f"trainer alone:  {sps:.2f} steps/s = {trn:,.0f} tokens/s (2 SAEs, d={d_in}, "
          f"{args.d_sae} latents, batch {args.batch})")
    e2e, wall = up_tokens_per_s(args.model, args.tokens, args.d_sae, args.batch, args.eval_games)
    slower = min(prod, trn)
    print(f"up end-to-end:  {e2e:,.0f} tokens/s trained (run of {args.tokens:,} tokens took {wall:.0f} s)")
    print(f"ratio end-to-end / slower component (the baseline, {slower:,.0f} tokens/s) = "
          f"{e2e / slower:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()

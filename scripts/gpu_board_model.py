#!/usr/bin/env python3
"""Train a board-supervised game LM on a GPU machine in one command, and write the model and its
learning curve to an output folder.

    python scripts/gpu_board_model.py --out $OUT                   # Othello, 8x512, ~8 minutes
    python scripts/gpu_board_model.py --out /tmp/t --toy           # a seconds-long run, any machine

The games are generated on the machine's own cores (`lm train --data-workers`: cores - 2
processes, batch i from seed (seed, i)), the model trains on the GPU in bf16 (CPU: fp32), with
auxiliary board heads below the SAE layer (boardlens.lm.board_heads) annealed away over the
last quarter. First a 30-second calibration measures steps per second, so that --steps (the LR
schedule and the anneal) fills 70% of the time (the rest is for 4 probe evaluations); then the
run itself, stopped by --minutes at the latest (run.json says if it stopped short of its steps).

<out>/model/ is the exported model (no heads), <out>/lm_metrics.jsonl its log, <out>/curve.json
the probe reconstruction by layer and the legal-move accuracy at every evaluation, and
<out>/run.json where and how long it trained. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = {"shape": ["--n-layer", "8", "--n-embd", "512", "--n-head", "8"], "sae_layer": 6, "batch_games": 512,
        "heads": ["2:weight=1", "4:weight=1"], "lr": "1e-3", "warmup": "300", "probe_games": 500}
TOY = {"shape": ["--n-layer", "2", "--n-embd", "32", "--n-head", "2"], "sae_layer": 1, "batch_games": 32,
       "heads": ["0:weight=1"], "lr": "3e-3", "warmup": "5", "probe_games": 20}


def lm_train(args: list[str], log: Path) -> None:
    with open(log, "a") as f:
        subprocess.run([sys.executable, "-m", "boardlens.services.cli", "lm", "train", *args],
                       cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True)


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or 'x86-64'})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of the run itself")
    ap.add_argument("--toy", action="store_true", help="a tiny model for seconds (tests the script anywhere)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    setup = TOY if args.toy else FULL
    gpu = torch.cuda.is_available()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--game", "othello", *setup["shape"], "--sae-layer", str(setup["sae_layer"]),
              "--batch-games", str(setup["batch_games"]), "--lr", setup["lr"], "--warmup-steps", setup["warmup"],
              "--device", "cuda" if gpu else "cpu", "--data-workers", str(args.workers), "--seed", str(args.seed),
              "--no-snapshots", *(["--bf16"] if gpu else []),
              *[a for h in setup["heads"] for a in ("--board-head", h)]]
    # 1. calibration: steps per second of this model on this machine, games made by the workers
    calib = out / "calibration"
    shutil.rmtree(calib, ignore_errors=True)
    seconds = 5 if args.toy else 30
    lm_train([*common, "--run-dir", str(calib), "--steps", "1000000", "--max-minutes", str(seconds / 60),
              "--eval-every", "1000000", "--eval-games", "50", "--probe-games", "0"], out / "train.log")
    log = [json.loads(line) for line in (calib / "lm_metrics.jsonl").read_text().splitlines()]
    rate = len(log) / max(log[-1]["wall_s"], 1e-9)  # steps/s, start-up included (a slight underestimate)
    steps = max(10, int(rate * args.minutes * 60 * 0.7))  # 30% left for the evaluations' probes
    shutil.rmtree(calib)
    # 2. the run: the schedules span `steps`; --minutes stops it at the latest
    run = out / "run"
    t0 = time.time()
    lm_train([*common, "--run-dir", str(run), "--steps", str(steps), "--max-minutes", str(args.minutes),
              "--eval-every", str(max(1, steps // 4)), "--eval-games", "500",
              "--probe-games", str(setup["probe_games"])], out / "train.log")
    minutes = (time.time() - t0) / 60
    shutil.copytree(run / "model", out / "model", dirs_exist_ok=True)
    shutil.copyfile(run / "lm_metrics.jsonl", out / "lm_metrics.jsonl")
    evals = [r for r in map(json.loads, (run / "lm_metrics.jsonl").read_text().splitlines()) if "wall_s" in r]
    curve = [{"step": r["step"], "tokens": r["games"] * 59, "wall_s": r["wall_s"],
              "legal_move_acc": r.get("legal_move_acc"), "probe_reconstruction": r.get("probe_reconstruction")}
             for r in evals]
    (out / "curve.json").write_text(json.dumps(curve, indent=1))
    done = curve[-1] if curve else {}
    info = {"device": device_name(), "data_workers": args.workers, "minutes": round(minutes, 2),
            "planned_steps": steps, "steps": done.get("step"), "tokens": done.get("tokens"),
            "calibrated_steps_per_s": round(rate, 3), "heads": setup["heads"], "shape": setup["shape"],
            "bf16": gpu, "torch": torch.__version__}
    (out / "run.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())

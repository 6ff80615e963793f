#!/usr/bin/env python3
"""Short pilots of board-supervised training, compared by probe reconstruction at the SAE layer
per CPU-minute (the curves that choose a bundled model's recipe).

    .venv/bin/python scripts/board_pilots.py --game othello --out runs/pilots-othello --parallel 2
    .venv/bin/python scripts/board_pilots.py --game othello --out runs/pilots-othello --summary

Each variant is one `boardlens lm train` run (one torch thread, so CPU-minutes are comparable
when several run at once) that logs, at every evaluation, its CPU seconds and the per-layer
board reconstruction of fresh linear probes on fresh games (the evaluator's definition).
--summary prints the table (markdown) and writes <out>/pilots.json. A variant already finished
in <out> is not run again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Continued runs start from the bundled model (its step, a fresh AdamW, the LR re-warmed over
# 30 steps, then constant 3e-4 until a short final decay); each gets the same number of steps.
# The shape and SAE layer are the bundled model's (its config.json).
OTHELLO = {"model": "models/othello-gpt-selfsup", "steps": 350, "batch_games": 128}
# Chess: 64 games (about 16k characters) a step at about 1,500 characters/s on one thread, so a
# pilot of about 25 CPU-minutes is 110 steps.
CHESS = {"model": "models/chess-gpt", "steps": 110, "batch_games": 64}
CONTINUED = ["--lr", "3e-4", "--warmup-steps", "30", "--schedule", "wsd", "--decay-frac", "0.005"]
VARIANTS = {
    "othello": {
        "plain": {"continued": True, "heads": []},  # the control: the same training, no heads
        "h4": {"continued": True, "heads": ["4:weight=1"]},
        "h2-3-4": {"continued": True, "heads": ["2:weight=1", "3:weight=1", "4:weight=1"]},
        "h4-5-w3": {"continued": True, "heads": ["4:weight=3", "5:weight=3"]},
        "scratch-h2-4": {"continued": False, "heads": ["2:weight=1", "4:weight=1"]},
    },
    "chess": {  # the SAE layer is block 5
        "plain": {"continued": True, "heads": []},
        "h3-4-w3": {"continued": True, "heads": ["3:weight=3", "4:weight=3"]},
        "h2-3-4": {"continued": True, "heads": ["2:weight=1", "3:weight=1", "4:weight=1"]},
        "h4-w10": {"continued": True, "heads": ["4:weight=10"]},
    },
}
SETUP = {"othello": OTHELLO, "chess": CHESS}


def base_config(game: str) -> dict:
    return json.loads((ROOT / SETUP[game]["model"] / "config.json").read_text())


def command(game: str, name: str, out: Path, probe_games: int, eval_every: int) -> list[str]:
    setup, v, base = SETUP[game], VARIANTS[game][name], base_config(game)
    gpt = base["gpt"]
    args = ["lm", "train", "--game", game, "--run-dir", str(out / name), "--n-layer", str(gpt["n_layer"]),
            "--n-embd", str(gpt["n_embd"]), "--n-head", str(gpt["n_head"]), "--sae-layer", str(base["sae_layer"]),
            "--batch-games", str(setup["batch_games"]), "--threads", "1", "--probe-games", str(probe_games),
            "--eval-every", str(eval_every), "--eval-games", "500", "--no-snapshots", "--seed", "101"]
    if v["continued"]:
        args += ["--init-from", str(ROOT / setup["model"]), "--steps", str(base["train_steps"] + setup["steps"]),
                 *CONTINUED]
    else:
        args += ["--steps", str(setup["steps"]), "--warmup-steps", "50"]
    for h in v["heads"]:
        args += ["--board-head", h]
    return [sys.executable, "-m", "boardlens.services.cli", *args]


def finished(run: Path) -> bool:
    return (run / "train_state.pt").exists() and (run / "done").exists()


def run_all(game: str, out: Path, names: list[str], parallel: int, probe_games: int, eval_every: int) -> None:
    todo = [n for n in names if not finished(out / n)]
    live: dict[str, subprocess.Popen] = {}
    while todo or live:
        while todo and len(live) < parallel:
            name = todo.pop(0)
            (out / name).mkdir(parents=True, exist_ok=True)
            log = open(out / name / "pilot.log", "w")
            resume = ["--resume"] if (out / name / "train_state.pt").exists() else []
            live[name] = subprocess.Popen(command(game, name, out, probe_games, eval_every) + resume, cwd=ROOT,
                                          stdout=log, stderr=subprocess.STDOUT)
            print(f"started {name}", flush=True)
        for name, p in list(live.items()):
            if p.poll() is not None:
                del live[name]
                if p.returncode == 0:
                    (out / name / "done").write_text("")
                print(f"{name} exited {p.returncode}", flush=True)
        time.sleep(5)


def summary(game: str, out: Path) -> list[dict]:
    layer = str(base_config(game)["sae_layer"])
    rows = []
    for name, v in VARIANTS[game].items():
        path = out / name / "lm_metrics.jsonl"
        if not path.exists():
            continue
        evals = [r for r in map(json.loads, path.read_text().splitlines()) if "probe_reconstruction" in r]
        for r in evals:
            rows.append({"variant": name, "heads": v["heads"], "continued": v["continued"], "step": r["step"],
                         "cpu_min": round(r.get("cpu_s", 0) / 60, 1), "probe_at_sae_layer": r["probe_reconstruction"][layer],
                         "probe_by_layer": r["probe_reconstruction"],
                         "legal": r.get("legal_move_acc", r.get("legal_move_rate"))})
    (out / "pilots.json").write_text(json.dumps(rows, indent=1))
    print(f"| variant | heads | step | CPU-min | probe rec. at block {layer} | legal |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {', '.join(r['heads']) or '-'} | {r['step']} | {r['cpu_min']} | "
              f"{r['probe_at_sae_layer']:.3f} | {r['legal']:.4f} |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--game", choices=sorted(VARIANTS), default="othello")
    ap.add_argument("--out", default=None, help="pilots folder [default: runs/pilots-<game>]")
    ap.add_argument("--variants", default="", help="comma-separated subset [default: all]")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--probe-games", type=int, default=150, help="train + test games of each probe evaluation")
    ap.add_argument("--eval-every", type=int, default=70)
    ap.add_argument("--summary", action="store_true", help="only print the table of what has run")
    args = ap.parse_args()
    out = Path(args.out or ROOT / "runs" / f"pilots-{args.game}")
    names = [n for n in args.variants.split(",") if n] or list(VARIANTS[args.game])
    if not args.summary:
        run_all(args.game, out, names, args.parallel, args.probe_games, args.eval_every)
    summary(args.game, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

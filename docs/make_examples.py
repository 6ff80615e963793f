#!/usr/bin/env python3
"""Regenerate the committed example reports from the bundled models: docs/reports/sweep-<game>.html.

    .venv/bin/python docs/make_examples.py othello      # `make example-reports` does Othello
    .venv/bin/python docs/make_examples.py chess

Each page is one sweep of 6 SAEs of 3 kinds (Standard and p-anneal at penalties 0.03 and 0.08,
TopK at k 16 and 64, activations normalised, 4096 latents) that `boardlens up` trains for 1.5M
tokens on the game's bundled model and evaluates live on 1000 + 1000 fresh games, then
`boardlens report` of that run. The page names the model, its layer and its weights' digest;
tests/test_example_reports.py fails when a committed page was made with other weights than the
bundled model's, so a new bundled model means running this again. About 25 minutes for
Othello on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ("standard:penalty=0.03|0.08,normalize=true", "p_anneal:penalty=0.03|0.08,normalize=true",
         "topk:k=16|64,normalize=true")
TOKENS = 1_500_000


def boardlens(*args: str) -> None:
    cmd = [sys.executable, "-m", "boardlens.services.cli", *args]
    print("+ boardlens " + " ".join(args), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("game", choices=("othello", "chess"))
    ap.add_argument("--tokens", type=int, default=TOKENS, help="tokens of the sweep")
    ap.add_argument("--run-dir", default=None, help="the sweep's run folder [default: runs/example-<game>]")
    ap.add_argument("--report-only", action="store_true", help="report an existing run folder again")
    args = ap.parse_args()
    run = args.run_dir or f"runs/example-{args.game}"
    if not args.report_only:
        boardlens("up", "--game", args.game, "--tokens", str(args.tokens), "--run-dir", run, "--quiet",
                  *[a for spec in SWEEP for a in ("--saes", spec)])
    out = ROOT / "runs" / f"example-{args.game}-report"
    boardlens("report", run, "--out", str(out), "--title", f"BoardLens example: {args.game} sweep")
    page = ROOT / "docs" / "reports" / f"sweep-{args.game}.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "index.html", page)
    print(f"wrote {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

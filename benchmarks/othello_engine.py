"""Games/s of the vectorised bitboard engine vs a plain Python loop engine, one core.

    .venv/bin/python benchmarks/othello_engine.py
    .venv/bin/python benchmarks/othello_engine.py --tiny    # seconds; what the tests run

Target: >= 2,000 complete random games/s on one core (the plain engine does ~330/s here).
The plain Python engine, measured in the same run, is the baseline of the ratio. --tiny: 20
plain games and a batch of 512 (the same code, figures too small to compare with the target).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boardlens.games.othello.engine import play_random  # noqa: E402
from boardlens.games.othello.labels import label_games  # noqa: E402

DIRS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def plain_game(rng: random.Random) -> int:
    """One random game on an 8x8 list board; returns the number of moves."""
    b = [[0] * 8 for _ in range(8)]
    b[3][3] = b[4][4] = 2
    b[3][4] = b[4][3] = 1
    me, moves, passes = 1, 0, 0

    def flips(r, c, me):
        out = []
        for dr, dc in DIRS:
            line, rr, cc = [], r + dr, c + dc
            while 0 <= rr < 8 and 0 <= cc < 8 and b[rr][cc] == 3 - me:
                line.append((rr, cc))
                rr, cc = rr + dr, cc + dc
            if line and 0 <= rr < 8 and 0 <= cc < 8 and b[rr][cc] == me:
                out += line
        return out

    while passes < 2:
        legal = [(r, c) for r in range(8) for c in range(8) if b[r][c] == 0 and flips(r, c, me)]
        if not legal:
            passes += 1
        else:
            passes = 0
            r, c = rng.choice(legal)
            for rr, cc in flips(r, c, me) + [(r, c)]:
                b[rr][cc] = me
            moves += 1
        me = 3 - me
    return moves


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plain-games", type=int, default=200, help="games of the plain Python engine")
    ap.add_argument("--games", type=int, default=16_384, help="batch of the vectorised engine")
    ap.add_argument("--tiny", action="store_true", help="20 plain games, a batch of 512: checks the code runs")
    args = ap.parse_args()
    if args.tiny:
        args.plain_games, args.games = 20, 512
    torch.set_num_threads(1)
    rng = random.Random(0)
    t0 = time.perf_counter()
    n_plain = args.plain_games
    for _ in range(n_plain):
        plain_game(rng)
    plain = n_plain / (time.perf_counter() - t0)
    play_random(256, seed=0)  # warm-up
    n = args.games
    t0 = time.perf_counter()
    rec = play_random(n, seed=1)
    fast = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    label_games(rec, 59)
    labelled = n / (time.perf_counter() - t0)
    print(f"plain Python engine: {plain:,.0f} games/s (the baseline, {n_plain} games)")
    print(f"vectorised engine:   {fast:,.0f} games/s (batch {n}), {fast / plain:.0f}x baseline "
          f"(target >= 2,000 games/s)")
    print(f"labelling (both families, 59 positions): {labelled:,.0f} games/s = {labelled * 59:,.0f} positions/s")


if __name__ == "__main__":
    main()

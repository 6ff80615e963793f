"""Chess games/s per source, labelled positions/s, and whether labelling keeps up with the LM.

    .venv/bin/python benchmarks/chess_sources.py [--games 200] [--workers 2]
    .venv/bin/python benchmarks/chess_sources.py --tiny    # seconds; what the tests run

Measured in this one run on this machine:
- games/s of each source: random legal play, Stockfish self-play (one process, then
  `--workers` processes through the producer's GameStream), reading a PGN file;
- labelled positions/s (all 15 families at the first 20 '.' of each game) in one process;
- the producer's LM forward on the bundled chess model (1 thread, 16 games x 256 chars), and
  the ratio of the labelled stream's tokens/s to it (target >= 1: labelling is not the
  bottleneck).
Baselines, measured in the same run: python-chess's SimpleEngine for our UCI client's
self-play, and the LM's consumption of games/s for the labelled streams. Without a Stockfish
binary the Stockfish rows are skipped (and said so) and the rest runs. --tiny: 8 games, 4 of
them Stockfish self-play, 1 worker, 4-game stream batches, 2 LM forwards (the same code).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boardlens.games.chess.lm_data import labelled_transcripts  # noqa: E402
from boardlens.games.chess.sources import close_engines, generate, parse_source  # noqa: E402
from boardlens.games.chess.tokenizer import GAME_CHARS  # noqa: E402
from boardlens.games.chess.transcripts import pgn_transcripts  # noqa: E402
from boardlens.games.stream import GameStream  # noqa: E402
from boardlens.lm.formats import load_any  # noqa: E402
from boardlens.services.config import bundled_model  # noqa: E402


def rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def python_chess_engine_games_per_s(spec, num_games: int) -> float:
    """Baseline: the same self-play through python-chess's SimpleEngine (asyncio round trips)."""
    import chess
    import chess.engine

    from boardlens.games.chess.sources import stockfish_path
    from boardlens.games.chess.transcripts import move_chars

    rng = np.random.default_rng(2)
    engine = chess.engine.SimpleEngine.popen_uci(stockfish_path(spec.engine))
    engine.configure({"Threads": 1, "Hash": 16})
    try:
        t0 = time.perf_counter()
        for g in range(num_games):
            nodes = int(np.exp(rng.uniform(np.log(spec.nodes[0]), np.log(spec.nodes[1] + 1))))
            board, length, n = chess.Board(), 1, 0
            opening = int(rng.integers(spec.opening[0], spec.opening[1] + 1))
            while length < GAME_CHARS and not board.is_game_over():
                if n < opening:
                    moves = list(board.legal_moves)
                    move = moves[int(rng.integers(len(moves)))]
                else:
                    move = engine.play(board, chess.engine.Limit(nodes=nodes), game=g).move
                length += move_chars(n, board.san(move))
                board.push(move)
                n += 1
        return num_games / (time.perf_counter() - t0)
    finally:
        engine.quit()


def stream_games_per_s(source: str, workers: int, batches: int, batch_games: int) -> float:
    with GameStream("chess", batch_games, seed=1, source=source, workers=workers) as s:
        s.next()  # start-up (spawned workers import python-chess) is not throughput
        t0 = time.perf_counter()
        n = sum(len(s.next()) for _ in range(batches))
        return n / (time.perf_counter() - t0)


def lm_tokens_per_s(model: str, threads: int, reps: int = 5) -> float:
    torch.set_num_threads(threads)
    net, meta = load_any(model)
    layer = int(meta.get("sae_layer", 0))
    x = torch.from_numpy(labelled_transcripts(generate(parse_source("random"), 16, (9,))).tokens)
    with torch.no_grad():
        net(x, resid_layers=(layer,), stop_after=layer)
        t0 = time.perf_counter()
        for _ in range(reps):
            net(x, resid_layers=(layer,), stop_after=layer)
    return reps * x.numel() / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--games", type=int, default=200, help="Games per single-process measurement.")
    ap.add_argument("--workers", type=int, default=2, help="Processes for the parallel measurements.")
    ap.add_argument("--model", default=bundled_model("chess"))
    ap.add_argument("--tiny", action="store_true",
                    help="8 games (4 Stockfish), 1 worker, 4-game batches: checks the code runs")
    args = ap.parse_args()
    n, n_sf, batch_games, lm_reps = args.games, max(args.games // 4, 8), 16, 5
    if args.tiny:
        n, n_sf, batch_games, lm_reps, args.workers = 8, 4, 4, 2, 1
    random_spec = parse_source("random")
    try:
        sf_spec = parse_source("stockfish")
    except ValueError as e:
        sf_spec = None
        print(f"skipped: Stockfish self-play, its python-chess baseline and the Stockfish stream: {e}")

    texts = generate(random_spec, n, (0,))
    r_random = rate(lambda: generate(random_spec, n, (1,)), n)
    r_sf = r_sf_base = r_sf_w = None
    if sf_spec is not None:
        generate(sf_spec, 1, (3,))  # starts the engine: as in the baseline, start-up is not timed
        r_sf = rate(lambda: generate(sf_spec, n_sf, (2,)), n_sf)
        close_engines()
        r_sf_base = python_chess_engine_games_per_s(sf_spec, n_sf)
    with tempfile.TemporaryDirectory() as tmp:
        pgn = Path(tmp) / "games.pgn"
        pgn.write_text("".join(f'[Event "{i}"]\n\n{" ".join(t[1:].split(" ")[:-1])} *\n\n'
                               for i, t in enumerate(texts)))
        r_pgn = rate(lambda: sum(1 for _ in pgn_transcripts(pgn)), n)
    positions = int((labelled_transcripts(texts[:8]).label_pos >= 0).sum()) / 8 * n  # warm-up + count
    r_label = rate(lambda: labelled_transcripts(texts), positions)
    batches = max(2, n // batch_games)
    r_stream_1 = stream_games_per_s("random", 0, batches, batch_games)
    r_stream_w = stream_games_per_s("random", args.workers, batches, batch_games)
    if sf_spec is not None:
        r_sf_w = stream_games_per_s("stockfish", args.workers, max(2, batches // 4), batch_games)
    lm = lm_tokens_per_s(args.model, threads=1, reps=lm_reps)
    show(args, sf_spec, r_random, r_sf, r_sf_base, r_sf_w, r_pgn, r_label, r_stream_1, r_stream_w, lm)


def show(args, sf_spec, r_random, r_sf, r_sf_base, r_sf_w, r_pgn, r_label, r_stream_1, r_stream_w, lm) -> None:
    print(f"{'what':<52}{'rate':>14}")
    for what, value in [
        ("random games/s (1 process, generation only)", r_random),
        ("stockfish self-play games/s (1 process)", r_sf),
        ("  baseline: same via python-chess SimpleEngine", r_sf_base),
        (f"stockfish self-play games/s ({args.workers} workers, labelled)", r_sf_w),
        ("PGN file -> transcripts, games/s (1 process)", r_pgn),
        ("labelled positions/s (15 families, 1 process)", r_label),
        ("random games labelled, games/s (in the producer)", r_stream_1),
        (f"random games labelled, games/s ({args.workers} workers)", r_stream_w),
        (f"LM forward tokens/s ({Path(args.model).name}, 1 thread)", lm),
    ]:
        print(f"{what:<52}{'skipped':>14}" if value is None else f"{what:<52}{value:>14,.0f}")
    if sf_spec is not None:
        print(f"\nstockfish self-play, our UCI pipe client / python-chess SimpleEngine (the baseline): "
              f"{r_sf / r_sf_base:.2f}x")
    need = lm / GAME_CHARS  # games/s the LM consumes
    sf = f"stockfish {r_sf_w / need:.2f}x" if sf_spec is not None else "stockfish skipped"
    print(f"\nthe LM consumes {need:,.1f} games/s (the baseline); labelled stream / LM: "
          f"random {r_stream_w / need:.2f}x, {sf} with {args.workers} workers, "
          f"random {r_stream_1 / need:.2f}x in-thread (target >= 1)")
    print(f"machine: {os.cpu_count()} cores")


if __name__ == "__main__":
    main()

"""A stream of labelled game batches for the producer, made in worker processes when slow.

    with GameStream("chess", batch_games=16, seed=0, source="stockfish", workers=2) as s:
        batch = s.next()          # LabelledGames, or None once a PGN file is exhausted

Order and content are deterministic: generated batch i comes from seed (seed, i) whichever
worker makes it, and PGN games keep file order. Othello's vectorised engine labels millions
of positions a second, so it runs in the caller's thread; chess (python-chess, about 2,000
labelled positions/s per core) runs in `workers` spawned processes with up to workers + 1
batches in flight, so a fast LM forward is not held back. workers = 0 labels in the caller.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from itertools import islice

import numpy as np

from boardlens.games import GAMES
from boardlens.games.labelled import LabelledGames


def _chess_generated(spec, num_games: int, seed: tuple[int, ...]) -> LabelledGames:
    from boardlens.games.chess.lm_data import labelled_transcripts
    from boardlens.games.chess.sources import generate

    return labelled_transcripts(generate(spec, num_games, seed))


def _chess_read(texts: list[str]) -> LabelledGames:
    from boardlens.games.chess.lm_data import labelled_transcripts

    return labelled_transcripts(texts)


def _worker_init() -> None:
    # The parent owns shutdown (it terminates the pool); Ctrl-C in a terminal reaches the
    # whole process group, and a worker traceback per core helps nobody.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class GameStream:
    def __init__(self, game: str, batch_games: int, seed: int = 0, source: str = "random",
                 workers: int = 0, engine: str = "", start: int = 0) -> None:
        """start: batches already handed out by an earlier run (a restart continues there)."""
        if game not in GAMES:
            raise ValueError(f"unknown game {game!r}; known: {GAMES}")
        if batch_games < 1 or workers < 0 or start < 0:
            raise ValueError("batch_games must be >= 1, workers and start >= 0")
        self.game, self.batch_games, self.seed = game, batch_games, seed
        self.index = start  # batches handed out
        self._pending: deque = deque()
        self._pool = None
        self._depth = workers + 1 if workers else 1  # batches in flight
        self._texts = None
        if game == "othello":
            if source != "random":
                raise ValueError(f"Othello games come from the 'random' source only, got {source!r}")
            self.source = "random"
            return
        from boardlens.games.chess.sources import parse_source
        from boardlens.games.chess.transcripts import pgn_transcripts

        self.spec = parse_source(source, engine)
        self.source = str(self.spec)
        if not self.spec.generated:
            self._texts = pgn_transcripts(self.spec.path)
            for _ in islice(self._texts, start * batch_games):  # the games of earlier runs
                pass
        if workers:
            ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent
            self._pool = ctx.Pool(workers, initializer=_worker_init)

    def _submit_chess(self) -> bool:
        """Queue the next chess batch; False once a PGN source has no more games."""
        if self.spec.generated:
            args = (self.spec, self.batch_games, (self.seed, len(self._pending) + self.index))
            fn = _chess_generated
        else:
            texts = list(islice(self._texts, self.batch_games))
            if not texts:
                return False
            args, fn = (texts,), _chess_read
        self._pending.append(self._pool.apply_async(fn, args) if self._pool else (fn, args))
        return True

    def next(self) -> LabelledGames | None:
        """The next batch (fewer games at the end of a PGN file), or None when exhausted."""
        if self.game == "othello":
            from boardlens.games.othello.lm_data import labelled_games

            out = labelled_games(np.random.default_rng([self.seed, self.index]), self.batch_games)
        else:
            while len(self._pending) < self._depth and self._submit_chess():
                pass
            if not self._pending:
                return None
            job = self._pending.popleft()
            out = job.get() if self._pool else job[0](*job[1])
        self.index += 1
        return out

    def close(self) -> None:
        if self._texts is not None:
            self._texts.close()  # the PGN file
        if self._pool is not None:
            self._pool.terminate()  # Stockfish children see EOF on stdin and exit
            self._pool.join()
            self._pool = None

    def __enter__(self) -> GameStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

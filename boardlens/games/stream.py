"""A stream of labelled game batches for the producer, made in worker processes when slow.

    with GameStream("chess", batch_games=16, seed=0, source="stockfish", workers=2) as s:
        batch = s.next()          # LabelledGames, or None once a PGN file is exhausted

Order and content are deterministic: the game's source (`Game.source`) says what batch i is,
whichever worker makes it. A source that labels fast (Othello's vectorised engine: millions
of positions a second) runs in the caller's thread; a slow one (chess, python-chess: about
2,000 labelled positions/s per core) runs in `workers` spawned processes with up to
workers + 1 batches in flight, so a fast LM forward is not held back. workers = 0 labels in
the caller.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque

from boardlens.games.labelled import LabelledGames
from boardlens.registry import GAMES


def _worker_init() -> None:
    # The parent owns shutdown (it terminates the pool); Ctrl-C in a terminal reaches the
    # whole process group, and a worker traceback per core helps nobody.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class GameStream:
    def __init__(self, game: str, batch_games: int, seed: int = 0, source: str = "random",
                 workers: int = 0, engine: str = "", start: int = 0) -> None:
        """start: batches already handed out by an earlier run (a restart continues there)."""
        if batch_games < 1 or workers < 0 or start < 0:
            raise ValueError("batch_games must be >= 1, workers and start >= 0")
        self.game, self.batch_games, self.seed = game, batch_games, seed
        self.index = start  # batches handed out
        self.src = GAMES[game].source(source, seed, batch_games, engine=engine, start=start)
        self.source = self.src.name
        self._pending: deque = deque()  # jobs of the next batches: async results, or (fn, args)
        self._pool = None
        self._exhausted = False
        self._depth = workers + 1 if workers and not self.src.in_process else 1  # batches in flight
        if workers and not self.src.in_process:
            ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent
            self._pool = ctx.Pool(workers, initializer=_worker_init)

    def _submit(self) -> bool:
        """Queue the next batch's job; False once the source is exhausted."""
        job = None if self._exhausted else self.src.job(self.index + len(self._pending))
        if job is None:
            self._exhausted = True
            return False
        fn, args = job
        self._pending.append(self._pool.apply_async(fn, args) if self._pool else (fn, args))
        return True

    def next(self) -> LabelledGames | None:
        """The next batch (fewer games at the end of a PGN file), or None when exhausted."""
        while len(self._pending) < self._depth and self._submit():
            pass
        if not self._pending:
            return None
        job = self._pending.popleft()
        out = job.get() if self._pool else job[0](*job[1])
        self.index += 1
        return out

    def close(self) -> None:
        self.src.close()
        if self._pool is not None:
            self._pool.terminate()  # Stockfish children see EOF on stdin and exit
            self._pool.join()
            self._pool = None

    def __enter__(self) -> GameStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""LM training batches made in worker processes, for a trainer faster than one core's games.

    pool = BatchPool(game.lm_data().batches["legal"], batch_games=512, seed=0, workers=14, start=step)
    x, y = pool.next()

Batch i is fn(np.random.default_rng([seed, i]), batch_games), whichever worker makes it, so a run
resumed at step s continues with batch s exactly. Up to 2 x workers batches are in flight. fn
must be a module-level function (it is pickled to spawned workers).
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Callable

import numpy as np


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns shutdown


def make_batch(fn: Callable, seed: int, index: int, batch_games: int):
    return fn(np.random.default_rng([seed, index]), batch_games)


class BatchPool:
    def __init__(self, fn: Callable, batch_games: int, seed: int, workers: int, start: int = 0) -> None:
        if workers < 1:
            raise ValueError("BatchPool needs workers >= 1")
        self.fn, self.batch_games, self.seed, self.index = fn, batch_games, seed, start
        self._pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_ignore_sigint)
        self._pending: deque = deque()
        self._depth = 2 * workers

    def next(self):
        while len(self._pending) < self._depth:
            i = self.index + len(self._pending)
            self._pending.append(self._pool.apply_async(make_batch, (self.fn, self.seed, i, self.batch_games)))
        batch = self._pending.popleft().get()
        self.index += 1
        return batch

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()

    def __enter__(self) -> BatchPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

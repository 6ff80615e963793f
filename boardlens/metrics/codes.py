"""An encoder's codes of one split, computed once and read by every metric pass.

Shapes: N rows (positions), F latents, d input width. A trained SAE's codes are sparse (L0 of
tens out of thousands), so they are kept as nonzero entries per chunk of rows: every later
pass (max activations, train counts, reconstruction on both splits, the unsupervised stats)
reads the entries instead of encoding the split again; the encoder's (N, d) x (d, F) product,
the costliest step, runs once per split. Codes that are not sparse (an untrained SAE fires
half its latents; probes and MLP neurons are dense) would take N x F memory as entries, so
they are encoded again per pass instead, one chunk at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

DENSE_FRACTION = 0.05  # above this share of nonzero codes, entries are not stored (~240 MB per 59k x 4096 split at 5%)
ENCODE_ROWS = 1024  # rows encoded at a time
DENSE_ROWS = 4096  # rows per piece of dense codes (each pass holds a few (rows, F) tensors)
Encoder = Callable[[torch.Tensor], torch.Tensor]  # x (n, d) -> f (n, F)


class Entries(NamedTuple):
    """The nonzero codes of one chunk of n rows: rows (nnz,) in 0..n-1, cols (nnz,), vals (nnz,) > 0."""

    rows: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor
    n: int


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def is_dense(f: torch.Tensor) -> bool:
    return bool((f > 0).float().mean() > DENSE_FRACTION)


def entries_of(f: torch.Tensor) -> Entries:
    rows, cols = (f > 0).nonzero(as_tuple=True)
    return Entries(rows, cols, f[rows, cols], f.shape[0])


class Codes:
    """encode(x) of one split; `pieces()` yields (rows slice, Entries or a dense (n, F) tensor).

    chunk: rows per stored piece (larger pieces mean fewer per-piece (latents x BSPs) sums in
    the passes that read them)."""

    @torch.no_grad()
    def __init__(self, encode: Encoder, x: torch.Tensor, chunk: int = 16384) -> None:
        self.encode, self.x, self.chunk = encode, x, chunk
        self.n = x.shape[0]
        self.stored: list[tuple[slice, Entries]] | None = []
        self.width = 0
        for sl in _chunks(self.n, chunk):
            parts = []
            # encoded in blocks whose (rows, F) codes stay in the CPU's cache for the passes that
            # find their nonzeros (~1.4x faster than whole chunks at F = 4096)
            for block in _chunks(sl.stop - sl.start, ENCODE_ROWS):
                f = encode(x[sl.start + block.start : sl.start + block.stop])
                self.width = f.shape[1]
                if not self.stored and not parts and is_dense(f):  # judged on the first block: dense codes stay dense
                    self.stored = None
                    return
                e = entries_of(f)
                parts.append(e._replace(rows=e.rows + block.start))
            self.stored.append((sl, Entries(*(torch.cat(p) for p in zip(*(e[:3] for e in parts), strict=True)),
                                            sl.stop - sl.start)))

    @property
    def dense(self) -> bool:
        return self.stored is None

    @torch.no_grad()
    def pieces(self) -> Iterator[tuple[slice, Entries | torch.Tensor]]:
        if self.stored is not None:
            yield from self.stored
            return
        for sl in _chunks(self.n, min(self.chunk, DENSE_ROWS)):
            yield sl, self.encode(self.x[sl])

    @torch.no_grad()
    def fmax(self) -> torch.Tensor:
        """Per-latent max over the rows (F,), >= 0."""
        out = torch.zeros(self.width)
        for _, p in self.pieces():
            if isinstance(p, Entries):
                out.scatter_reduce_(0, p.cols, p.vals, "amax")
            else:
                out = torch.maximum(out, p.amax(0))
        return out.clamp_min(0)

    def subset(self, index: torch.Tensor) -> Codes:
        """The codes of rows `index` (M,) of this split, in that order (no new encoding when stored)."""
        if index.numel() == self.n and torch.equal(index, torch.arange(self.n)):
            return self  # Othello: every position is labelled
        if self.stored is None:
            return Codes(self.encode, self.x[index], self.chunk)
        lookup = torch.full((self.n,), -1, dtype=torch.long)
        lookup[index] = torch.arange(index.numel())
        out = Codes.__new__(Codes)
        out.encode, out.x, out.chunk, out.n, out.width = self.encode, self.x[index], self.chunk, index.numel(), self.width
        rows, cols, vals = [], [], []
        for sl, e in self.stored:
            new = lookup[e.rows + sl.start]
            keep = new >= 0
            rows.append(new[keep])
            cols.append(e.cols[keep])
            vals.append(e.vals[keep])
        r, c, v = torch.cat(rows), torch.cat(cols), torch.cat(vals)
        if index.numel() > 1 and not bool((index[1:] > index[:-1]).all()):  # reordered: sort the rows back
            order = torch.argsort(r, stable=True)
            r, c, v = r[order], c[order], v[order]
        bounds = torch.searchsorted(r, torch.arange(0, out.n + self.chunk, self.chunk))
        out.stored = [(sl, Entries(r[a:b] - sl.start, c[a:b], v[a:b], sl.stop - sl.start))
                      for sl, a, b in zip(_chunks(out.n, self.chunk), bounds[:-1].tolist(), bounds[1:].tolist(),
                                          strict=False)]
        return out

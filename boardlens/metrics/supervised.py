"""The paper's supervised metrics: coverage and board reconstruction, per BSP family.

Shapes: N positions, F SAE latents, B BSPs of one family, K thresholds (default 11:
t = 0.0, 0.1, ..., 1.0). A latent is active at t when its activation is strictly greater
than t * (its max activation over the train split); dead latents (max 0) are never active,
and latent ids are the SAE's own (no re-indexing by alive latents).

Counts are accumulated chunk by chunk from the sparse nonzero codes (one sparse product per
chunk for all thresholds at once), so no (K, F, N, B) product is ever built. Codes that are
not sparse (a random SAE fires half its latents; probe and MLP-neuron references are dense)
take dense products instead, one per threshold: above DENSE_FRACTION nonzeros they are faster.

- coverage = max_t mean_b max_f F1[t, f, b] (in-sample, on the train split, as upstream);
  a BSP that never holds contributes F1 = 0.
- reconstruction: latent f is a high-precision classifier (HPC) of b at t on the train split
  when on/active >= 0.95 and on >= 10; on the test split each position's predicted board is
  the union of the BSPs of its active HPC latents; F1 from TP/FP/FN summed over positions x
  BSPs. The best threshold is picked on the test split, as upstream does (reported with it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

THRESHOLDS = tuple(i / 10 for i in range(11))
DENSE_FRACTION = 0.05  # above this share of nonzero codes, dense products beat sparse ones
Encoder = Callable[[torch.Tensor], torch.Tensor]  # x (n, d) -> f (n, F)


class FamilyScore(NamedTuple):
    coverage: float  # max over thresholds of the mean best-latent F1
    coverage_threshold: float  # the threshold that achieved it
    reconstruction: float  # board reconstruction F1 at the best threshold
    reconstruction_threshold: float
    num_bsps: int


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


@torch.no_grad()
def max_activations(encode: Encoder, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Per-latent max activation over x (N, d) -> (F,)."""
    out = None
    for sl in _chunks(x.shape[0], chunk):
        m = encode(x[sl]).amax(dim=0)
        out = m if out is None else torch.maximum(out, m)
    return out.clamp_min(0)


def _buckets(f: torch.Tensor, cut: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nonzero codes of f (n, F) with how many thresholds each exceeds.

    Returns rows (nnz,), latents (nnz,), k (nnz,) where the entry is active at threshold i
    iff k > i. Only the nnz positive entries are touched after one pass over f: SAE codes
    are sparse (L0 of tens out of thousands), so every later product costs ~nnz * B.
    """
    rows, cols = (f > 0).nonzero(as_tuple=True)
    v = f[rows, cols]
    k = (v[None, :] > cut[:, cols]).sum(0)  # (nnz,) in 0..K
    return rows, cols, k


def _dense(f: torch.Tensor) -> bool:
    return bool((f > 0).float().mean() > DENSE_FRACTION)


def _bucket_index(f: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
    """Dense twin of `_buckets`: (n, F) number of thresholds each code exceeds (0 if f <= 0)."""
    k = torch.zeros(f.shape, dtype=torch.int8)
    for c in cut:  # (F,) per threshold: K passes over (n, F), no (K, n, F) tensor
        k += f > c
    return k


def _spmm(rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int], rhs: torch.Tensor) -> torch.Tensor:
    """0/1 sparse matrix with ones at (rows, cols) of `shape`, times dense rhs."""
    sp = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(rows.numel()), shape,
                                 check_invariants=False)
    return torch.sparse.mm(sp, rhs)


@torch.no_grad()
def count_on(encode: Encoder, x: torch.Tensor, labels: torch.Tensor, fmax: torch.Tensor,
             thresholds=THRESHOLDS, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Train-split counts: labels (N, B) bool -> (on (K, F, B), active (K, F)).

    Counts are first made per exact bucket (entries exceeding exactly j thresholds), then
    summed from the top: active at threshold i == bucket > i.
    """
    K, F = len(thresholds), fmax.shape[0]
    per_bucket = torch.zeros((K + 1) * F, labels.shape[1])
    active_b = torch.zeros((K + 1) * F)
    cut = _cuts(fmax, thresholds)
    for sl in _chunks(x.shape[0], chunk):
        f, lab = encode(x[sl]), labels[sl].float()
        if _dense(f):
            k = _bucket_index(f, cut)  # (n, F)
            for j in range(1, K + 1):
                hit = (k == j).float()
                per_bucket[j * F : (j + 1) * F] += hit.T @ lab
                active_b[j * F : (j + 1) * F] += hit.sum(0)
            continue
        rows, cols, k = _buckets(f, cut)
        flat = k * F + cols  # row of (bucket, latent)
        per_bucket += _spmm(flat, rows, (per_bucket.shape[0], sl.stop - sl.start), lab)
        active_b += torch.bincount(flat, minlength=active_b.numel()).float()
    # on[i] = sum over buckets j > i; drop bucket 0 (exceeds no threshold).
    on = per_bucket.view(K + 1, F, -1).flip(0).cumsum(0).flip(0)[1:]
    active = active_b.view(K + 1, F).flip(0).cumsum(0).flip(0)[1:]
    return on, active


def _cuts(fmax: torch.Tensor, thresholds) -> torch.Tensor:
    """(K, F) activation cut-offs; dead latents get +inf so they are never active."""
    cut = torch.tensor(thresholds)[:, None] * fmax[None, :]
    return torch.where(fmax[None, :] > 0, cut, torch.full_like(cut, float("inf")))


def f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1e-12), torch.zeros_like(tp))


def coverage(on: torch.Tensor, active: torch.Tensor, total: torch.Tensor) -> tuple[float, int]:
    """on (K, F, B), active (K, F), total (B,) -> (coverage, index of the best threshold)."""
    tp = on
    fp = active[:, :, None] - on
    fn = total[None, None, :] - on
    per_t = f1(tp, fp, fn).amax(dim=1).mean(dim=1)  # (K,)
    best = int(per_t.argmax())
    return float(per_t[best]), best


def high_precision(on: torch.Tensor, active: torch.Tensor, precision: float = 0.95,
                   min_count: int = 10) -> torch.Tensor:
    """(K, F, B) bool: latent f predicts BSP b at threshold t."""
    prec = on / active[:, :, None].clamp_min(1)
    return (prec >= precision) & (on >= min_count)


@torch.no_grad()
def reconstruction(encode: Encoder, x: torch.Tensor, labels: torch.Tensor, fmax: torch.Tensor,
                   hpc: torch.Tensor, thresholds=THRESHOLDS, chunk: int = 4096) -> torch.Tensor:
    """Test split x (N, d), labels (N, B) bool, hpc (K, F, B) -> TP, FP, FN per BSP (K, B, 3)."""
    K = len(thresholds)
    counts = torch.zeros(K, labels.shape[1], 3)
    cut = _cuts(fmax, thresholds)
    for sl in _chunks(x.shape[0], chunk):
        n = sl.stop - sl.start
        f, lab = encode(x[sl]), labels[sl]
        dense = _dense(f)
        if dense:
            kd = _bucket_index(f, cut)
        else:
            rows, cols, k = _buckets(f, cut)
        for i in range(K):
            if dense:
                pred = ((kd > i).float() @ hpc[i].float()) > 0  # (n, B)
            else:
                keep = k > i
                pred = _spmm(rows[keep], cols[keep], (n, hpc.shape[1]), hpc[i].float()) > 0
            counts[i, :, 0] += (pred & lab).sum(0)
            counts[i, :, 1] += (pred & ~lab).sum(0)
            counts[i, :, 2] += (~pred & lab).sum(0)
    return counts


def score_families(encode: Encoder, x_train: torch.Tensor, labels_train: dict[str, torch.Tensor],
                   x_test: torch.Tensor, labels_test: dict[str, torch.Tensor],
                   fmax: torch.Tensor, thresholds=THRESHOLDS) -> dict[str, FamilyScore]:
    """Coverage and reconstruction for each family; labels are {family: (N, B) bool}.

    All families' BSPs are concatenated so each threshold costs one product per split.
    """
    names = list(labels_train)
    widths = [labels_train[n].shape[1] for n in names]
    on, active = count_on(encode, x_train, torch.cat([labels_train[n] for n in names], 1), fmax,
                          thresholds)
    hpc = high_precision(on, active)
    rec_counts = reconstruction(encode, x_test, torch.cat([labels_test[n] for n in names], 1),
                                fmax, hpc, thresholds)
    out, start = {}, 0
    for name, w in zip(names, widths, strict=True):
        cols = slice(start, start + w)
        start += w
        total = labels_train[name].float().sum(0)
        cov, ti = coverage(on[:, :, cols], active, total)
        c = rec_counts[:, cols].sum(1)  # (K, 3)
        rec = f1(c[:, 0], c[:, 1], c[:, 2])
        ri = int(rec.argmax())
        out[name] = FamilyScore(cov, thresholds[ti], float(rec[ri]), thresholds[ri], w)
    return out

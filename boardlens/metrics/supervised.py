"""The paper's supervised metrics: coverage and board reconstruction, per BSP family.

Shapes: N positions, F SAE latents, B BSPs of one family, K thresholds (default 11:
t = 0.0, 0.1, ..., 1.0). A latent is active at t when its activation is strictly greater
than t * (its max activation over the train split's labelled positions); dead latents (max 0)
are never active, and latent ids are the SAE's own (no re-indexing by alive latents).

Each split is encoded once (`boardlens.metrics.codes.Codes`); counts are accumulated chunk by
chunk from the sparse nonzero codes (one segment sum per chunk for all thresholds at once),
so no (K, F, N, B) product is ever built. Codes that are not sparse (a random SAE fires half
its latents; probe and MLP-neuron references are dense) are not stored: each pass encodes them
again piece by piece and reads that piece's nonzeros the same way.

- coverage = max_t mean_b max_f F1[t, f, b] (in-sample, on the train split, as upstream);
  a BSP that never holds contributes F1 = 0.
- reconstruction: latent f is a high-precision classifier (HPC) of b at t on the train split
  when on/active >= 0.95 and on >= 10; on the test split each position's predicted board is
  the union of the BSPs of its active HPC latents; F1 from TP/FP/FN summed over positions x
  BSPs. The best threshold is picked on the test split, as upstream does (reported with it).
  Variants (FamilyScore): per square, held-out threshold, upstream's t = 1.0 slot, HPC counts.
  The counts are made in `boardlens.metrics.reconstruction`; thresholds and buckets in
  `boardlens.metrics.thresholds`.

Where this departs from upstream (adamkarvonen/SAE_BoardGameEval), on purpose:
- upstream picks the reported threshold by the per-square F1 (t = 1.0 slot excluded) and then
  reports the per-class F1 there; here each variant picks its own best threshold by its own F1;
- upstream's per-square rule adjusts squares with exactly one FP; here any number of FPs;
- upstream's Othello coverage keeps the masked (empty) class in its denominator (coverage at
  most 2/3); here masked classes are out of every denominator.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from boardlens.metrics.codes import Codes, Entries, entries_of
from boardlens.metrics.reconstruction import RecCounts, reconstruction
from boardlens.metrics.thresholds import THRESHOLDS, buckets

__all__ = ["THRESHOLDS", "FamilyScore", "RecCounts", "best_latent_f1", "count_on", "coverage", "high_precision",
           "reconstruction", "score_families"]


@torch.no_grad()
def count_on(codes: Codes, labels: torch.Tensor, fmax: torch.Tensor,
             thresholds=THRESHOLDS) -> tuple[torch.Tensor, torch.Tensor]:
    """Train-split counts: labels (N, B) bool -> (on (K, F, B), active (K, F)).

    Counts are first made per exact bucket (entries exceeding exactly j thresholds), then
    summed from the top: active at threshold i == bucket > i.
    """
    K, F = len(thresholds), fmax.shape[0]
    per_bucket = torch.zeros((K + 1) * F, labels.shape[1])
    active_b = torch.zeros((K + 1) * F)
    for sl, piece in codes.pieces():
        lab = labels[sl].float()
        if not isinstance(piece, Entries):  # dense codes, one piece at a time: the same segment sums
            piece = entries_of(piece)  # (at 20% nonzeros ~2.5x the K dense products; even at 50%)
        flat = (buckets(piece, fmax, thresholds) * F + piece.cols).int()  # row of (bucket, latent)
        # per (bucket, latent): the sum of the label rows of its entries, as one embedding_bag
        # over entries sorted by that key (a 0/1 sparse product, ~2x torch.sparse.mm here;
        # int32 keys sort 2x faster than int64)
        flat, order = torch.sort(flat)
        bags = torch.searchsorted(flat, torch.arange(per_bucket.shape[0], dtype=torch.int32)).long()
        per_bucket += torch.nn.functional.embedding_bag(piece.rows.index_select(0, order), lab, bags, mode="sum")
        active_b += torch.bincount(flat, minlength=active_b.numel()).float()
    # on[i] = sum over buckets j > i; drop bucket 0 (exceeds no threshold).
    on = per_bucket.view(K + 1, F, -1).flip(0).cumsum(0).flip(0)[1:]
    active = active_b.view(K + 1, F).flip(0).cumsum(0).flip(0)[1:]
    return on, active


def f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1e-12), torch.zeros_like(tp))


def best_latent_f1(on: torch.Tensor, active: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """on (K, F, B), active (K, F), total (B,) -> (K, B): per threshold, each BSP's best F1 over
    latents (one threshold at a time: no (K, F, B) temporaries)."""
    out = torch.empty(on.shape[0], on.shape[2])
    for i in range(on.shape[0]):
        tp = on[i]
        out[i] = f1(tp, active[i][:, None] - tp, total[None, :] - tp).amax(0)
    return out


def coverage(on: torch.Tensor, active: torch.Tensor, total: torch.Tensor) -> tuple[float, int]:
    """on (K, F, B), active (K, F), total (B,) -> (coverage, index of the best threshold)."""
    return _best_threshold(best_latent_f1(on, active, total))


def _best_threshold(best: torch.Tensor) -> tuple[float, int]:
    """best (K, B) of one family -> (max over thresholds of the mean over BSPs, its index)."""
    per_t = best.mean(1)
    i = int(per_t.argmax())
    return float(per_t[i]), i


def high_precision(on: torch.Tensor, active: torch.Tensor, precision: float = 0.95,
                   min_count: int = 10) -> torch.Tensor:
    """(K, F, B) bool: latent f predicts BSP b at threshold t."""
    prec = on / active[:, :, None].clamp_min(1)
    return (prec >= precision) & (on >= min_count)


def _f1(c: torch.Tensor) -> torch.Tensor:
    """(..., 3) TP, FP, FN -> F1 (...)."""
    return f1(c[..., 0], c[..., 1], c[..., 2])


class FamilyScore(NamedTuple):
    """One family's scores. Reconstruction variants (all F1 on the test split):

    reconstruction        per class (TP/FP/FN over positions x BSPs), threshold picked on the
                          test split, as upstream reports it
    per_square            a square holding both a TP and an FP counts as FP, not TP (upstream
                          adjusts only squares with exactly one FP; any number here), threshold
                          picked on the test split by this F1
    heldout               per class at the threshold that is best on the train split (no test
                          data chooses it)
    last                  upstream's t = 1.0 slot: each active latent predicts its HPC BSPs at
                          the highest threshold it exceeds among those where it has any
    hpc_pairs / hpc_latents / bsps_with_hpc   at the reconstruction threshold: (latent, BSP)
                          high-precision pairs, latents with at least one, BSPs with at least one
    """

    coverage: float  # max over thresholds of the mean best-latent F1 (train split, in-sample)
    coverage_threshold: float
    reconstruction: float
    reconstruction_threshold: float
    num_bsps: int
    reconstruction_per_square: float = 0.0
    reconstruction_per_square_threshold: float = 0.0
    reconstruction_heldout: float = 0.0
    reconstruction_heldout_threshold: float = 0.0
    reconstruction_last: float = 0.0
    hpc_pairs: int = 0
    hpc_latents: int = 0
    bsps_with_hpc: int = 0


def layout(families: dict, widths: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(square of each BSP column (B,), each family's columns) for families concatenated in
    order; a family's BSP index is cell * kept classes + class (Family.one_hot)."""
    squares, cols, start, sq0 = [], [], 0, 0
    for fam, w in zip(families.values(), widths, strict=True):
        per_cell = len(fam.kept_classes) if fam is not None else 1
        squares.append(sq0 + torch.arange(w) // per_cell)
        cols.append(torch.arange(start, start + w))
        start, sq0 = start + w, sq0 + w // per_cell
    return torch.cat(squares), cols


def score_families(train: Codes, labels_train: dict[str, torch.Tensor], test: Codes,
                   labels_test: dict[str, torch.Tensor], fmax: torch.Tensor, thresholds=THRESHOLDS,
                   families: dict | None = None) -> dict[str, FamilyScore]:
    """Coverage and every reconstruction variant for each family; labels are {family: (N, B)
    bool}, families {name: Family} (for squares; default: each BSP its own square).

    All families' BSPs are concatenated so each threshold costs one product per split.
    """
    names = list(labels_train)
    widths = [labels_train[n].shape[1] for n in names]
    square_of, fam_cols = layout({n: (families or {}).get(n) for n in names}, widths)
    lab_train = torch.cat([labels_train[n] for n in names], 1)
    on, active = count_on(train, lab_train, fmax, thresholds)
    hpc = high_precision(on, active)
    rec_test = reconstruction(test, torch.cat([labels_test[n] for n in names], 1), fmax, hpc, square_of,
                              fam_cols, thresholds)
    rec_train = reconstruction(train, lab_train, fmax, hpc, square_of, [], thresholds)
    best = best_latent_f1(on, active, lab_train.sum(0).float())
    out = {}
    for name, cols in zip(names, fam_cols, strict=True):
        cov, ti = _best_threshold(best[:, cols])
        out[name] = _family_score(cov, thresholds[ti], rec_test, rec_train, hpc, cols, square_of, thresholds)
    return out


def _family_score(cov, cov_t, test: RecCounts, train: RecCounts, hpc, cols, square_of, thresholds) -> FamilyScore:
    c = test.counts[:, cols].sum(1)  # (K, 3)
    rec = _f1(c)
    ri = int(rec.argmax())
    squares = square_of[cols].unique()
    adj = c.clone()
    adj[:, 0] -= test.tp_and_fp[:, squares].sum(1)  # such a square's TP becomes no TP (its FP stays)
    per_sq = _f1(adj)
    si = int(per_sq.argmax())
    hi = int(_f1(train.counts[:, cols].sum(1)).argmax())
    pairs = hpc[ri][:, cols]  # (F, B_family)
    return FamilyScore(cov, cov_t, float(rec[ri]), thresholds[ri], cols.numel(),
                       float(per_sq[si]), thresholds[si], float(rec[hi]), thresholds[hi],
                       float(_f1(test.last[cols].sum(0))), int(pairs.sum()), int(pairs.any(1).sum()),
                       int(pairs.any(0).sum()))

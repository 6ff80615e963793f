"""The paper's supervised metrics: coverage and board reconstruction, per BSP family.

Shapes: N positions, F SAE latents, B BSPs of one family, K thresholds (default 11:
t = 0.0, 0.1, ..., 1.0). A latent is active at t when its activation is strictly greater
than t * (its max activation over the train split); dead latents (max 0) are never active,
and latent ids are the SAE's own (no re-indexing by alive latents).

Each split is encoded once (`boardlens.metrics.codes.Codes`); counts are accumulated chunk by
chunk from the sparse nonzero codes (one sparse product per chunk for all thresholds at once),
so no (K, F, N, B) product is ever built. Codes that are not sparse (a random SAE fires half
its latents; probe and MLP-neuron references are dense) take dense products instead, one per
threshold: above codes.DENSE_FRACTION nonzeros they are faster.

- coverage = max_t mean_b max_f F1[t, f, b] (in-sample, on the train split, as upstream);
  a BSP that never holds contributes F1 = 0.
- reconstruction: latent f is a high-precision classifier (HPC) of b at t on the train split
  when on/active >= 0.95 and on >= 10; on the test split each position's predicted board is
  the union of the BSPs of its active HPC latents; F1 from TP/FP/FN summed over positions x
  BSPs. The best threshold is picked on the test split, as upstream does (reported with it).
  Variants (FamilyScore): per square, held-out threshold, upstream's t = 1.0 slot, HPC counts.

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

from boardlens.metrics.codes import Codes, Entries

THRESHOLDS = tuple(i / 10 for i in range(11))


def _buckets(e: Entries, cut: torch.Tensor, fmax: torch.Tensor, thresholds) -> torch.Tensor:
    """(nnz,) how many thresholds each nonzero code exceeds: active at threshold i iff k > i.

    cut (K, F) = thresholds x fmax (+inf for dead latents). A guess by searchsorted on
    vals / fmax is fixed up against the definition (vals > cut) with two (nnz,) gathers per
    pass, not K: rounding can put the ratio and the product on different sides of a cut, so
    the guess may be off by a step."""
    K = cut.shape[0]
    if e.vals.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    scale = fmax[e.cols]
    ratio = torch.where(scale > 0, e.vals / scale.clamp_min(1e-30), torch.zeros_like(e.vals))
    k = torch.searchsorted(torch.tensor(thresholds, dtype=ratio.dtype), ratio, side="left")
    flat = cut.T.contiguous().flatten()  # flat[col * K + i] = cut[i, col]
    base = e.cols * K
    for _ in range(K):  # a pass moves each wrong k one step towards its value
        up = (k < K) & (e.vals > flat[base + k.clamp(max=K - 1)])
        down = (k > 0) & ~(e.vals > flat[base + (k - 1).clamp(min=0)])
        if not bool(up.any()) and not bool(down.any()):
            break
        k = k + up.long() - down.long()
    return k


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
def count_on(codes: Codes, labels: torch.Tensor, fmax: torch.Tensor,
             thresholds=THRESHOLDS) -> tuple[torch.Tensor, torch.Tensor]:
    """Train-split counts: labels (N, B) bool -> (on (K, F, B), active (K, F)).

    Counts are first made per exact bucket (entries exceeding exactly j thresholds), then
    summed from the top: active at threshold i == bucket > i.
    """
    K, F = len(thresholds), fmax.shape[0]
    per_bucket = torch.zeros((K + 1) * F, labels.shape[1])
    active_b = torch.zeros((K + 1) * F)
    cut = _cuts(fmax, thresholds)
    for sl, piece in codes.pieces():
        lab = labels[sl].float()
        if not isinstance(piece, Entries):
            k = _bucket_index(piece, cut)  # (n, F)
            for j in range(1, K + 1):
                hit = (k == j).float()
                per_bucket[j * F : (j + 1) * F] += hit.T @ lab
                active_b[j * F : (j + 1) * F] += hit.sum(0)
            continue
        flat = _buckets(piece, cut, fmax, thresholds) * F + piece.cols  # row of (bucket, latent)
        per_bucket += _spmm(flat, piece.rows, (per_bucket.shape[0], piece.n), lab)
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


class RecCounts(NamedTuple):
    """Reconstruction counts of one split, summed over positions."""

    counts: torch.Tensor  # (K, B, 3) TP, FP, FN per threshold and BSP
    tp_and_fp: torch.Tensor  # (K, S) per threshold and square: positions where it has both a TP and an FP
    last: torch.Tensor  # (B, 3) TP, FP, FN of the highest-active-labelled variant


def highest_labelled(hpc: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(K+1, F): for a latent that exceeds exactly k thresholds, the highest threshold i < k at
    which it is an HPC of some BSP in `cols` (one family), or -1."""
    K, F = hpc.shape[:2]
    labelled = hpc[:, :, cols].any(-1)  # (K, F)
    idx = torch.where(labelled, torch.arange(K)[:, None], torch.full((K, F), -1))
    return torch.cat([torch.full((1, F), -1), idx.cummax(0).values])  # row k: max over i < k


def _tally(out: torch.Tensor, pred: torch.Tensor, lab: torch.Tensor, lab_sum: torch.Tensor) -> torch.Tensor:
    """Add TP, FP, FN per BSP of pred, lab (n, B) 0/1 floats to out (B, 3); lab_sum = lab.sum(0).
    Returns the true positives (n, B)."""
    tp = pred * lab
    n_pred, n_tp = pred.sum(0), tp.sum(0)
    out += torch.stack([n_tp, n_pred - n_tp, lab_sum - n_tp], 1)
    return tp


class _Tables(NamedTuple):
    """HPC rows gathered for embedding_bag: `index[j, f]` is latent f's row in `table` for
    slot j, -1 when it has no HPC there; table (rows, B') float."""

    index: torch.Tensor
    table: torch.Tensor


def _tables(hpc_slots: list[torch.Tensor]) -> _Tables:
    """hpc_slots: per slot a (F, B') bool -> one table of the latents that have an HPC in it."""
    index = torch.full((len(hpc_slots), hpc_slots[0].shape[0] if hpc_slots else 0), -1, dtype=torch.long)
    rows, start = [], 0
    for j, h in enumerate(hpc_slots):
        has = h.any(1).nonzero().squeeze(1)
        index[j, has] = torch.arange(start, start + has.numel())
        rows.append(h[has].float())
        start += has.numel()
    width = hpc_slots[0].shape[1] if hpc_slots else 0
    return _Tables(index, torch.cat(rows) if rows else torch.zeros(0, width))


def _or_rows(rows: torch.Tensor, idx: torch.Tensor, n: int, table: torch.Tensor) -> torch.Tensor:
    """(n, B') bool: per row, the OR of table[idx] over its entries (rows sorted ascending)."""
    if idx.numel() == 0:
        return torch.zeros(n, table.shape[1], dtype=torch.bool)
    offsets = torch.searchsorted(rows, torch.arange(n))
    return torch.nn.functional.embedding_bag(idx, table, offsets, mode="sum") > 0


@torch.no_grad()
def reconstruction(codes: Codes, labels: torch.Tensor, fmax: torch.Tensor, hpc: torch.Tensor,
                   square_of: torch.Tensor | None = None, family_cols: list[torch.Tensor] | None = None,
                   thresholds=THRESHOLDS) -> RecCounts:
    """A split's codes, labels (N, B) bool, hpc (K, F, B) -> RecCounts.

    square_of (B,): each BSP's square (default: its own), for the per-square variant;
    family_cols: each family's BSP columns, for the highest-active-labelled variant (default:
    one family; [] skips it and the per-square counts: the split only picks thresholds). Only entries of latents with an HPC are read: a trained SAE's
    HPC latents are a fraction of its dictionary, an untrained one has almost none.
    """
    K, B = len(thresholds), labels.shape[1]
    square_of = torch.arange(B) if square_of is None else square_of
    sq = torch.zeros(B, int(square_of.max()) + 1 if B else 0)
    sq[torch.arange(B), square_of] = 1.0  # (B, S) BSP -> its square
    family_cols = [torch.arange(B)] if family_cols is None else family_cols
    best = [highest_labelled(hpc, c) for c in family_cols]
    last = [_tables([hpc[i][:, c] for i in range(K)]) for c in family_cols]
    per_t = _tables([hpc[i] for i in range(K)])
    out = RecCounts(torch.zeros(K, B, 3), torch.zeros(K, sq.shape[1]), torch.zeros(B, 3))
    cut = _cuts(fmax, thresholds)
    labelled = hpc.any(0).any(1)  # (F,) latents with an HPC anywhere
    for sl, piece in codes.pieces():
        n = sl.stop - sl.start
        if isinstance(piece, Entries):
            keep = labelled[piece.cols]
            e = Entries(piece.rows[keep], piece.cols[keep], piece.vals[keep], n)
            rows, cols, k = e.rows, e.cols, _buckets(e, cut, fmax, thresholds)
        else:
            kd = _bucket_index(piece, cut)
            rows, sub = kd[:, labelled].nonzero(as_tuple=True)
            cols = labelled.nonzero().squeeze(1)[sub]
            k = kd[rows, cols].long()
        lab_f = labels[sl].float()
        lab_sum = lab_f.sum(0)
        for i in range(K):
            at = per_t.index[i, cols]
            use = (k > i) & (at >= 0)
            if not bool(use.any()):  # nothing predicted: every label is a FN
                out.counts[i, :, 2] += lab_sum
                continue
            pred = _or_rows(rows[use], at[use], n, per_t.table).float()
            tp = _tally(out.counts[i], pred, lab_f, lab_sum)
            if family_cols:  # the per-square variant (not needed on the split that only picks thresholds)
                sq_pred, sq_tp = pred @ sq, tp @ sq  # (n, S) predicted and right BSPs per square
                out.tp_and_fp[i] += ((sq_tp > 0) & (sq_pred > sq_tp)).sum(0)
        if not family_cols:
            continue
        pred = torch.zeros(n, B, dtype=torch.bool)
        for fam_cols, fam_best, tables in zip(family_cols, best, last, strict=True):
            # upstream's t = 1.0 slot: each active latent predicts its HPC BSPs of the family at
            # the highest threshold it exceeds among those where it has any
            chosen = fam_best[k, cols]
            at = tables.index[chosen.clamp_min(0), cols]
            use = (chosen >= 0) & (at >= 0)
            pred[:, fam_cols] = _or_rows(rows[use], at[use], n, tables.table)
        _tally(out.last, pred.float(), lab_f, lab_sum)
    return out


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
    out = {}
    for name, cols in zip(names, fam_cols, strict=True):
        cov, ti = coverage(on[:, :, cols], active, labels_train[name].float().sum(0))
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

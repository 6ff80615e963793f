"""Board reconstruction counts: each position's predicted board is the union of the BSPs of
its active high-precision (HPC) latents; TP, FP and FN are counted per threshold and BSP.

Shapes: n rows of a piece of codes, F latents, B BSPs (all families side by side), K
thresholds, S squares. Only entries above their latent's lowest HPC threshold can predict
anything; one comparison drops the rest first (~95% of a trained SAE's codes).

Predictions are built per piece in one of two ways, whichever is cheaper there:
- sparse: distinct (threshold, row, BSP) triples, cost ~ predicted pairs. A trained Othello
  SAE's HPC latents are few and narrow (~300k pairs for a 59k-position split);
- dense: per threshold an (n, B) board per row (an embedding_bag OR of HPC table rows), cost
  ~ n * B * K. Chess' common BSPs (a threat, an occupied square) make an active latent an HPC
  of dozens of BSPs: 62M pairs against 164M cells in 16k rows, where sorting the pairs takes
  ~8x longer than the dense boards.
The choice is per piece, by the pair count against SPARSE_MAX_DENSITY of the cells.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from boardlens.metrics.codes import Codes, Entries
from boardlens.metrics.thresholds import THRESHOLDS, buckets, cuts

SPARSE_MAX_DENSITY = 1 / 32  # predicted pairs per (threshold, row, BSP) cell up to which pairs are cheaper


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


# --- the sparse way: (slot, row, BSP) triples --------------------------------------------------

class _Lists(NamedTuple):
    """HPC BSPs per (slot, latent), as CSR: those of key j = slot * F + latent are
    bsps[ptr[j]:ptr[j + 1]]."""

    ptr: torch.Tensor  # (slots * F + 1,)
    bsps: torch.Tensor  # (pairs,)

    def degree(self, keys: torch.Tensor) -> torch.Tensor:
        return self.ptr.index_select(0, keys + 1) - self.ptr.index_select(0, keys)


def _lists(hpcs: list[tuple[torch.Tensor, torch.Tensor]], F: int) -> _Lists:
    """hpcs: per group of slots, (hpc (slots, F, B') bool, the global column of each of its B'
    BSPs); slots are numbered group after group."""
    keys, bsps, base = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)], 0
    for h, cols in hpcs:
        slot, latent, b = h.nonzero(as_tuple=True)  # row-major: sorted by (slot, latent)
        keys.append((base + slot) * F + latent)
        bsps.append(cols[b])
        base += h.shape[0]
    return _Lists(torch.searchsorted(torch.cat(keys), torch.arange(base * F + 1)), torch.cat(bsps))


class _Pairs(NamedTuple):
    """Distinct predicted (slot, row, BSP) triples of one piece, and whether each is labelled."""

    slot: torch.Tensor
    row: torch.Tensor
    bsp: torch.Tensor
    hit: torch.Tensor  # bool: the BSP holds at that row (a TP; else an FP)


def _predict(keys: torch.Tensor, slot: torch.Tensor, rows: torch.Tensor, lists: _Lists,
             lab: torch.Tensor) -> _Pairs:
    """Union per (slot, row) of the BSP lists `keys` (M,) of entries at rows (M,); lab (n, B)."""
    n, B = lab.shape
    start = lists.ptr.index_select(0, keys)
    deg = lists.degree(keys)
    which = torch.repeat_interleave(torch.arange(keys.numel()), deg)  # each pair's entry
    first = torch.cumsum(deg, 0) - deg
    bsp = lists.bsps[start[which] + torch.arange(which.numel()) - first[which]]
    key = torch.unique((slot[which] * n + rows[which]) * B + bsp)  # several latents may predict one BSP
    slot, rest = key // (n * B), key % (n * B)
    row, bsp = rest // B, rest % B
    return _Pairs(slot, row, bsp, lab[row, bsp])


def _tally_pairs(out: torch.Tensor, p: _Pairs, lab_sum: torch.Tensor) -> None:
    """Add TP, FP, FN per slot and BSP to out (slots, B, 3); lab_sum (B,): labels of the piece."""
    slots, B = out.shape[:2]
    n_pred = torch.bincount(p.slot * B + p.bsp, minlength=slots * B).view(slots, B)
    n_tp = torch.bincount((p.slot * B + p.bsp)[p.hit], minlength=slots * B).view(slots, B)
    out += torch.stack([n_tp, n_pred - n_tp, lab_sum - n_tp], -1)


def _tp_and_fp_pairs(p: _Pairs, square_of: torch.Tensor, n: int, out: torch.Tensor) -> None:
    """Add to out (slots, S) the rows where a square holds both a TP and an FP."""
    S = out.shape[1]
    key = (p.slot * n + p.row) * S + square_of[p.bsp]
    both = torch.unique(key[p.hit])
    both = both[torch.isin(both, key[~p.hit])]
    out += torch.bincount((both // (n * S)) * S + both % S, minlength=out.numel()).view(out.shape).float()


# --- the dense way: an (n, B) board per threshold -------------------------------------------

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


class _SquareGroup(NamedTuple):
    """The c BSPs on each of some squares: cols (S_c * c,) ordered square by square, squares (S_c,)."""

    cols: torch.Tensor
    squares: torch.Tensor
    c: int


def _square_groups(square_of: torch.Tensor) -> list[_SquareGroup]:
    """Squares holding more than one BSP, grouped by how many (a lone BSP cannot be both a TP
    and an FP on its square), so each group is one (n, S_c, c) view."""
    if square_of.numel() == 0:
        return []
    per_square = torch.bincount(square_of)
    order = torch.argsort(square_of, stable=True)
    return [_SquareGroup(order[per_square[square_of[order]] == c], (per_square == c).nonzero().squeeze(1), c)
            for c in per_square.unique().tolist() if c > 1]


def _tally_board(out: torch.Tensor, pred: torch.Tensor, lab: torch.Tensor, lab_sum: torch.Tensor) -> torch.Tensor:
    """Add TP, FP, FN per BSP of pred, lab (n, B) 0/1 floats to out (B, 3). Returns the TPs (n, B)."""
    tp = pred * lab
    n_pred, n_tp = pred.sum(0), tp.sum(0)
    out += torch.stack([n_tp, n_pred - n_tp, lab_sum - n_tp], 1)
    return tp


# --- both ---------------------------------------------------------------------------------------

class _Plan:
    """What every piece reads, made once from the HPCs: hpc (K, F, B), family_cols (each
    family's BSP columns; [] for a split that only picks thresholds), square_of (B,)."""

    def __init__(self, hpc: torch.Tensor, fmax: torch.Tensor, family_cols: list[torch.Tensor],
                 square_of: torch.Tensor, thresholds) -> None:
        K, F, B = hpc.shape
        self.K, self.F, self.B, self.thresholds, self.fmax = K, F, B, thresholds, fmax
        self.family_cols, self.square_of = family_cols, square_of
        cut = cuts(fmax, thresholds)
        self.has = hpc.any(2)  # (K, F)
        labelled = self.has.any(0)
        lowest = torch.where(labelled, self.has.float().argmax(0), torch.zeros(F, dtype=torch.long))
        self.floor = torch.where(labelled, cut.gather(0, lowest[None])[0], torch.full_like(fmax, float("inf")))
        # the t = 1.0 slot: per family, the threshold whose HPC BSPs an entry of bucket k predicts
        self.best = [highest_labelled(hpc, c) for c in family_cols]
        self.per_t = _lists([(hpc, torch.arange(B))], F)  # slots: thresholds
        self.last = _lists([(hpc[:, :, c], c) for c in family_cols], F)  # slots: family * K + threshold
        self.per_t_tables = _tables([hpc[i] for i in range(K)])
        self.last_tables = [_tables([hpc[i][:, c] for i in range(K)]) for c in family_cols]
        self.squares = int(square_of.max()) + 1 if B else 0
        self.groups = _square_groups(square_of)

    def entries(self, piece: Entries | torch.Tensor, n: int) -> Entries:
        """The piece's codes that can predict anything: above their latent's lowest HPC threshold."""
        if isinstance(piece, Entries):
            keep = (piece.vals > self.floor.index_select(0, piece.cols)).nonzero().squeeze(1)
            return Entries(*(v.index_select(0, keep) for v in piece[:3]), n)
        r, c = (piece > self.floor).nonzero(as_tuple=True)
        return Entries(r, c, piece[r, c], n)


def _sparse_piece(plan: _Plan, out: RecCounts, e: Entries, k: torch.Tensor, item: torch.Tensor,
                  slot: torch.Tensor, lab: torch.Tensor, lab_sum: torch.Tensor) -> None:
    F, K = plan.F, plan.K
    if item.numel():
        p = _predict(slot * F + e.cols[item], slot, e.rows[item], plan.per_t, lab)
        _tally_pairs(out.counts, p, lab_sum)
        if plan.family_cols:  # the per-square variant (not on the split that only picks thresholds)
            _tp_and_fp_pairs(p, plan.square_of, e.n, out.tp_and_fp)
    else:
        out.counts[:, :, 2] += lab_sum
    if not plan.family_cols:
        return
    chosen = torch.stack([b[k, e.cols] for b in plan.best])  # (families, M), -1: none
    fam, item = chosen.ge(0).nonzero(as_tuple=True)
    keys = (fam * K + chosen[fam, item]) * F + e.cols[item]
    if item.numel():
        _tally_pairs(out.last[None], _predict(keys, torch.zeros_like(keys), e.rows[item], plan.last, lab), lab_sum)
    else:
        out.last[:, 2] += lab_sum


def _dense_piece(plan: _Plan, out: RecCounts, e: Entries, k: torch.Tensor, lab: torch.Tensor,
                 lab_sum: torch.Tensor) -> None:
    n, lab_f, tables = e.n, lab.float(), plan.per_t_tables
    for i in range(plan.K):
        at = tables.index[i, e.cols]
        use = (k > i) & (at >= 0)
        if not bool(use.any()):  # nothing predicted: every label is a FN
            out.counts[i, :, 2] += lab_sum
            continue
        pred = _or_rows(e.rows[use], at[use], n, tables.table).float()
        tp = _tally_board(out.counts[i], pred, lab_f, lab_sum)
        if plan.family_cols:
            for g in plan.groups:  # (n, S_c) right and wrong BSPs per square
                on_tp = tp[:, g.cols].view(n, -1, g.c).sum(-1)
                on_pred = pred[:, g.cols].view(n, -1, g.c).sum(-1)
                out.tp_and_fp[i, g.squares] += ((on_tp > 0) & (on_pred > on_tp)).sum(0).float()
    if not plan.family_cols:
        return
    pred = torch.zeros(n, plan.B, dtype=torch.bool)
    for fam_cols, fam_best, fam_tables in zip(plan.family_cols, plan.best, plan.last_tables, strict=True):
        chosen = fam_best[k, e.cols]
        at = fam_tables.index[chosen.clamp_min(0), e.cols]
        use = (chosen >= 0) & (at >= 0)
        pred[:, fam_cols] = _or_rows(e.rows[use], at[use], n, fam_tables.table)
    _tally_board(out.last, pred.float(), lab_f, lab_sum)


@torch.no_grad()
def reconstruction(codes: Codes, labels: torch.Tensor, fmax: torch.Tensor, hpc: torch.Tensor,
                   square_of: torch.Tensor | None = None, family_cols: list[torch.Tensor] | None = None,
                   thresholds=THRESHOLDS) -> RecCounts:
    """A split's codes, labels (N, B) bool, hpc (K, F, B) -> RecCounts.

    square_of (B,): each BSP's square (default: its own), for the per-square variant;
    family_cols: each family's BSP columns, for upstream's t = 1.0 variant, where each active
    latent predicts its HPC BSPs of each family at the highest threshold it exceeds among those
    where it has any of that family (default: one family; [] skips it and the per-square
    counts: the split only picks thresholds).
    """
    K, B = len(thresholds), labels.shape[1]
    square_of = torch.arange(B) if square_of is None else square_of
    plan = _Plan(hpc, fmax, [torch.arange(B)] if family_cols is None else family_cols, square_of, thresholds)
    out = RecCounts(torch.zeros(K, B, 3), torch.zeros(K, plan.squares), torch.zeros(B, 3))
    for sl, piece in codes.pieces():
        e = plan.entries(piece, sl.stop - sl.start)
        k = buckets(e, fmax, thresholds)
        lab = labels[sl]
        lab_sum = lab.sum(0)
        # one (entry, threshold) item per threshold i < k where the latent has an HPC
        item, slot = (torch.arange(K)[None, :] < k[:, None]).logical_and_(plan.has.T[e.cols]).nonzero(as_tuple=True)
        pairs = int(plan.per_t.degree(slot * plan.F + e.cols[item]).sum())
        if pairs <= SPARSE_MAX_DENSITY * e.n * B * K:
            _sparse_piece(plan, out, e, k, item, slot, lab, lab_sum)
        else:
            _dense_piece(plan, out, e, k, lab, lab_sum)
    return out

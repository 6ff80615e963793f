"""AUROC and average precision of many score columns at once, with ties handled exactly.

Shapes: C columns (latents) of N scores each; labels (C, N) or (N,) bool; optional weights
(C, N) >= 0 (0 drops an entry: how columns with fewer real entries are padded). Ties matter
here: a sparse latent is 0 on most positions, so a tied (positive, negative) pair counts 1/2
in AUROC, and average precision steps only at distinct scores (scikit-learn's definition:
AP = sum over distinct thresholds of (R_k - R_k-1) * P_k).
"""

from __future__ import annotations

import torch


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    return x.cumsum(1) - x


@torch.no_grad()
def auroc_ap(scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
             presorted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (C, N), labels (C, N) or (N,) bool, weights (C, N) -> (AUROC (C,), AP (C,)).

    presorted: each row of scores is already ascending (labels and weights aligned with it),
    which saves the sort, the costliest step. A column without (weighted) positives or
    negatives gets AUROC NaN; without positives, AP NaN.
    """
    C, N = scores.shape
    labels = labels.expand(C, N) if labels.dim() == 1 else labels
    w = torch.ones(C, N) if weights is None else weights.float()
    if presorted:
        vals, lab = scores.float(), labels.float()
    else:
        vals, order = torch.sort(scores.float(), dim=1)  # ascending
        lab = torch.gather(labels, 1, order).float()
        w = torch.gather(w, 1, order)
    wpos, wneg = w * lab, w * (1 - lab)
    # tie groups: each entry's group's first index (ascending order)
    starts = torch.ones(C, N, dtype=torch.bool)
    starts[:, 1:] = vals[:, 1:] != vals[:, :-1]
    idx = torch.arange(N).expand(C, N)
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(1).values  # (C, N)
    group = starts.long().cumsum(1) - 1  # (C, N) group number within its row
    neg_in_group = torch.zeros(C, N).scatter_add_(1, group, wneg).gather(1, group)
    neg_below = torch.gather(_exclusive_cumsum(wneg), 1, first)  # negatives in lower groups
    p, n = wpos.sum(1), wneg.sum(1)
    auroc = (wpos * (neg_below + neg_in_group / 2)).sum(1) / (p * n)
    auroc = torch.where((p > 0) & (n > 0), auroc, torch.full_like(auroc, float("nan")))
    # descending thresholds: the one at an entry's score admits its group and every higher one
    tp = torch.gather(wpos.flip(1).cumsum(1).flip(1), 1, first)
    predicted = torch.gather(w.flip(1).cumsum(1).flip(1), 1, first)
    ap = (wpos * tp / predicted.clamp_min(1e-12)).sum(1) / p
    ap = torch.where(p > 0, ap, torch.full_like(ap, float("nan")))
    return auroc, ap


def gini(auroc: torch.Tensor) -> torch.Tensor:
    """|2 AUROC - 1|: FADE's clarity and responsiveness (0 = chance, 1 = perfect either way)."""
    return (2 * auroc - 1).abs()

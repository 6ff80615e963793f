"""Thresholds on activations: t * (a latent's max activation), and which of them each code exceeds.

K thresholds, F latents. A code is active at threshold i when it is strictly greater than
cut[i] = t_i * fmax (t = 0: any positive); a dead latent (fmax 0) is never active. A code's
bucket k is how many thresholds it exceeds, so it is active at i iff k > i: one small integer
per code stands for all K comparisons.
"""

from __future__ import annotations

import torch

from boardlens.metrics.codes import Entries

THRESHOLDS = tuple(i / 10 for i in range(11))


def buckets(e: Entries, fmax: torch.Tensor, thresholds) -> torch.Tensor:
    """(nnz,) how many thresholds each nonzero code exceeds: active at threshold i iff k > i.

    The guess ceil(vals / fmax * (K - 1)) (exact for evenly spaced thresholds but for rounding)
    is fixed up against the definition, vals > t * fmax (the same float32 product as `cuts`;
    dead latents exceed nothing); each pass moves a wrong k one step, so any thresholds come
    out right. Gathers use index_select (~2x advanced indexing on this CPU)."""
    K = len(thresholds)
    if e.vals.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    scale = fmax.index_select(0, e.cols)
    t = torch.tensor(thresholds, dtype=scale.dtype)
    alive = scale > 0
    ratio = torch.where(alive, e.vals / scale.clamp_min(1e-30), torch.zeros_like(e.vals))
    k = torch.ceil(ratio * (K - 1)).clamp_(0, K).long()
    for _ in range(K):
        over = alive & (e.vals > t.index_select(0, k.clamp(max=K - 1)) * scale)  # exceeds threshold k
        under = ~alive | ~(e.vals > t.index_select(0, (k - 1).clamp(min=0)) * scale)  # not threshold k - 1
        up, down = (k < K) & over, (k > 0) & under
        if not bool(up.any()) and not bool(down.any()):
            break
        k = k + up.long() - down.long()
    return k


def cuts(fmax: torch.Tensor, thresholds) -> torch.Tensor:
    """(K, F) activation cut-offs; dead latents get +inf so they are never active."""
    cut = torch.tensor(thresholds)[:, None] * fmax[None, :]
    return torch.where(fmax[None, :] > 0, cut, torch.full_like(cut, float("inf")))

"""Unsupervised SAE metrics on a fixed evaluation sample of activations."""

from __future__ import annotations

from typing import NamedTuple

import torch

from boardlens.metrics.codes import Codes, Entries


class ReconStats(NamedTuple):
    l0: float  # mean number of active latents per activation
    var_explained: float  # 1 - sum Var(x - x_hat) / sum Var(x), mean-centred per dimension
    mse: float  # mean over activations of ||x - x_hat||^2 / d
    cosine: float  # mean cosine similarity of x and x_hat
    l2_ratio: float  # mean ||x_hat|| / ||x||
    frac_alive: float  # latents that fired at least once on the sample


def _reconstruct(ae, piece, decoder) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(x_hat (n, d), fired latents (F,) bool, active count) of one piece of codes. Stored
    entries decode as bias + f W_dec^T with f sparse (every architecture's decode is affine):
    decoder = (bias (d,), W_dec^T (F, d) contiguous) for embedding_bag, nnz * d work."""
    if isinstance(piece, Entries):
        bias, table = decoder
        offsets = torch.searchsorted(piece.rows, torch.arange(piece.n))
        x_hat = torch.nn.functional.embedding_bag(piece.cols, table, offsets, mode="sum",
                                                  per_sample_weights=piece.vals) + bias
        fired = torch.zeros(ae.d_sae, dtype=torch.bool)
        fired[piece.cols] = True
        return x_hat, fired, float(piece.cols.numel())
    x_hat = ae.decode(piece)
    active = piece > 0
    return x_hat, active.any(0), active.sum().item()


@torch.no_grad()
def recon_stats(ae, x: torch.Tensor, chunk: int = 8192, codes: list | None = None) -> ReconStats:
    """x (N, d) -> ReconStats, streaming over chunks (sums kept in float64). codes: the
    `Codes` of consecutive row blocks of x (each split's, made once), else x is encoded here."""
    n, d = x.shape
    l0 = sq = cos = ratio = 0.0
    fired = torch.zeros(ae.d_sae, dtype=torch.bool)
    resid_sum = torch.zeros(d, dtype=torch.float64)
    resid_sq = torch.zeros(d, dtype=torch.float64)
    blocks = codes if codes is not None else [Codes(ae.encode, x, chunk)]
    decoder = (ae.decode(torch.zeros(1, ae.d_sae))[0], ae.decoder_weight.T.contiguous())
    start = 0
    for block in blocks:
        for sl, piece in block.pieces():
            xb = x[start + sl.start : start + sl.stop].float()
            x_hat, on, count = _reconstruct(ae, piece, decoder)
            r = (xb - x_hat).double()
            resid_sum += r.sum(0)
            resid_sq += r.pow(2).sum(0)
            fired |= on
            l0 += count
            sq += r.pow(2).sum().item()
            cos += torch.nn.functional.cosine_similarity(xb, x_hat, dim=-1).sum().item()
            ratio += (x_hat.norm(dim=-1) / xb.norm(dim=-1).clamp_min(1e-12)).sum().item()
        start += block.n
    xd = x.double()
    total_var = xd.var(dim=0, unbiased=False).sum()
    resid_var = (resid_sq / n - (resid_sum / n).pow(2)).sum()
    fve = float(1 - resid_var / total_var.clamp_min(1e-12))
    return ReconStats(l0 / n, fve, sq / (n * d), cos / n, ratio / n, fired.float().mean().item())

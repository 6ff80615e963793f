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
        fired = torch.zeros(ae.d_sae, dtype=torch.bool).index_fill_(0, piece.cols, True)
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
    x_sum = torch.zeros(d, dtype=torch.float64)
    x_sq = torch.zeros(d, dtype=torch.float64)
    blocks = codes if codes is not None else [Codes(ae.encode, x, chunk)]
    decoder = (ae.decode(torch.zeros(1, ae.d_sae))[0], ae.decoder_weight.T.contiguous())
    start = 0
    for block in blocks:
        for sl, piece in block.pieces():
            xb = x[start + sl.start : start + sl.stop].float()
            x_hat, on, count = _reconstruct(ae, piece, decoder)
            x_sum += xb.sum(0, dtype=torch.float64)
            x_sq += xb.pow(2).sum(0, dtype=torch.float64)
            r = xb - x_hat
            r2 = r.pow(2)
            resid_sum += r.sum(0, dtype=torch.float64)
            resid_sq += r2.sum(0, dtype=torch.float64)
            fired |= on
            l0 += count
            sq += r2.sum(dtype=torch.float64).item()
            nx, nh = xb.norm(dim=-1), x_hat.norm(dim=-1)
            cos += ((xb * x_hat).sum(-1) / (nx.clamp_min(1e-8) * nh.clamp_min(1e-8))).sum().item()  # as F.cosine_similarity
            ratio += (nh / nx.clamp_min(1e-12)).sum().item()
        start += block.n
    total_var = (x_sq / n - (x_sum / n).pow(2)).sum()
    resid_var = (resid_sq / n - (resid_sum / n).pow(2)).sum()
    fve = float(1 - resid_var / total_var.clamp_min(1e-12))
    return ReconStats(l0 / n, fve, sq / (n * d), cos / n, ratio / n, fired.float().mean().item())

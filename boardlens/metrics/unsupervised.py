"""Unsupervised SAE metrics on a fixed evaluation sample of activations."""

from __future__ import annotations

from typing import NamedTuple

import torch


class ReconStats(NamedTuple):
    l0: float  # mean number of active latents per activation
    var_explained: float  # 1 - sum Var(x - x_hat) / sum Var(x), mean-centred per dimension
    mse: float  # mean over activations of ||x - x_hat||^2 / d
    cosine: float  # mean cosine similarity of x and x_hat
    l2_ratio: float  # mean ||x_hat|| / ||x||
    frac_alive: float  # latents that fired at least once on the sample


@torch.no_grad()
def recon_stats(ae, x: torch.Tensor, chunk: int = 8192) -> ReconStats:
    """x (N, d) -> ReconStats, streaming over chunks (sums kept in float64)."""
    n, d = x.shape
    l0 = sq = cos = ratio = 0.0
    fired = torch.zeros(ae.d_sae, dtype=torch.bool)
    resid_sum = torch.zeros(d, dtype=torch.float64)
    resid_sq = torch.zeros(d, dtype=torch.float64)
    for s in range(0, n, chunk):
        xb = x[s : s + chunk].float()
        x_hat, f = ae(xb)
        r = (xb - x_hat).double()
        resid_sum += r.sum(0)
        resid_sq += r.pow(2).sum(0)
        active = f > 0
        fired |= active.any(0)
        l0 += active.sum().item()
        sq += r.pow(2).sum().item()
        cos += torch.nn.functional.cosine_similarity(xb, x_hat, dim=-1).sum().item()
        ratio += (x_hat.norm(dim=-1) / xb.norm(dim=-1).clamp_min(1e-12)).sum().item()
    xd = x.double()
    total_var = xd.var(dim=0, unbiased=False).sum()
    resid_var = (resid_sq / n - (resid_sum / n).pow(2)).sum()
    fve = float(1 - resid_var / total_var.clamp_min(1e-12))
    return ReconStats(l0 / n, fve, sq / (n * d), cos / n, ratio / n, fired.float().mean().item())

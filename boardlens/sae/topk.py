"""TopK trainer (Gao et al. 2406.04093), as dictionary_learning's TopKTrainer.

loss = recon(x, x_hat) + auxk_alpha * AuxK, where f keeps each row's k largest ReLU
pre-activations. AuxK reconstructs the residual e = x - x_hat (detached) from the top
min(d/2, #dead) latents among the dead ones (silent for `auxk_dead_tokens` tokens), through
the decoder without its bias, normalised by the residual's variance. No sparsity penalty:
k sets the sparsity. b_dec starts at the geometric median of the first batch; gradients are
projected off the decoder columns and clipped to norm 1; decoder columns stay unit norm.
After `threshold_start_step` the SAE tracks a running mean (beta) of the smallest active
latent (used by BatchTopK at inference).

CPU/GPU speed: the decoder reads only the k active columns of each row (embedding_bag over
(N, k) indices: N*k*d work, not the N*F*d of decoding a dense f).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from boardlens.registry import TRAINERS
from boardlens.sae.base import Losses, SAETrainer, TrainerOptions, recon_loss


@torch.no_grad()
def geometric_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """Weiszfeld's iteration from the mean: points (N, d) -> (d,)."""
    guess = points.mean(dim=0)
    for _ in range(max_iter):
        w = 1 / (points - guess).norm(dim=1).clamp_min(1e-12)
        new = (w / w.sum()) @ points
        moved = (new - guess).norm()
        guess = new
        if moved < tol:
            break
    return guess


@dataclass(frozen=True)
class TopKOptions(TrainerOptions):
    k: int = 32
    """Active latents per row."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK term (0 = off)."""
    auxk_dead_tokens: int = 10_000_000
    """A latent silent for this many tokens is dead (AuxK trains the dead ones)."""
    threshold_beta: float = 0.999
    """Running-mean factor of the inference threshold (the smallest active latent)."""
    threshold_start_step: int = 1000
    """Step from which the inference threshold is tracked."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.k <= self.d_sae or self.auxk_alpha < 0 or not 0 <= self.threshold_beta <= 1:
            raise ValueError(f"need 0 < k <= d_sae, auxk_alpha >= 0 and 0 <= threshold_beta <= 1, got "
                             f"{self.k}, {self.auxk_alpha}, {self.threshold_beta}")


class TopKTrainer(SAETrainer):
    kind = "topk"
    arch = "topk"
    Options = TopKOptions
    summary = "recon + auxk_alpha AuxK, grad clip 1, b_dec from the first batch's geometric median"
    dl_trainer = "TopKTrainer"
    clip_norm = 1.0
    default_recon = "mse"

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        o = self.opts
        self.auxk_alpha, self.auxk_dead_tokens = o.auxk_alpha, o.auxk_dead_tokens
        self.threshold_beta, self.threshold_start_step = o.threshold_beta, o.threshold_start_step

    def arch_options(self) -> dict:
        return {"k": self.opts.k}

    def first_batch(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            self.ae.b_dec.copy_(geometric_median(x))

    # --- the code: (values, column indices, bag offsets) for embedding_bag ------------
    def sparse_code(self, acts: torch.Tensor):
        """Each row's k largest: values and indices (N, k); offsets None (one bag per row)."""
        vals, idx = self.ae.top_k(acts)
        return vals, idx, None

    def decode_sparse(self, vals, idx, offsets, bias: bool = True) -> torch.Tensor:
        # embedding_bag reads rows of a contiguous (F, d) table: 10x faster than on the
        # transposed view of the (d, F) decoder, and the copy is only F*d.
        table = self.ae.decoder.weight.T.contiguous().to(vals.dtype)  # bf16 codes under autocast
        out = F.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=vals)
        return out + self.ae.b_dec if bias else out

    def min_active(self, vals: torch.Tensor) -> torch.Tensor:
        """The threshold's sample: mean over rows of the row's smallest positive top value."""
        v = vals.masked_fill(vals <= 0, float("inf"))
        return v.min(dim=1).values.mean()

    def losses(self, x: torch.Tensor) -> Losses:
        n, n_lat = x.shape[0], self.ae.d_sae
        acts = self.ae.post_relu(x)  # (N, F)
        vals, idx, offsets = self.sparse_code(acts)
        x_hat = self.decode_sparse(vals, idx, offsets)
        recon = recon_loss(x, x_hat, self.recon)
        on = vals > 0
        active = torch.zeros(n_lat, dtype=torch.bool, device=x.device)
        active[idx[on]] = True  # (F,)
        aux = torch.zeros((), device=x.device)
        if self.auxk_alpha > 0:
            # dead after this batch: silent now and for auxk_dead_tokens tokens including it
            dead = ~active & (self.tokens_since_fired + n >= self.auxk_dead_tokens)
            aux = self.auxk_loss((x - x_hat).detach(), acts, dead)
        total = recon + self.auxk_alpha * aux
        if self.step > self.threshold_start_step:
            self.track_threshold(self.min_active(vals.detach()))
        return Losses(total, recon, torch.zeros((), device=x.device), aux, x_hat, active, on.sum() / n)

    def auxk_loss(self, e: torch.Tensor, acts: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        n_dead = int(dead.sum())
        if n_dead == 0:
            return torch.zeros((), device=e.device)
        k_aux = min(self.ae.d_in // 2, n_dead)
        v, i = acts.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False)  # (N, k_aux)
        e_hat = self.decode_sparse(v, i, None, bias=False)
        denom = (e - e.mean(dim=0)).pow(2).sum(dim=-1).mean()
        return ((e - e_hat).pow(2).sum(dim=-1).mean() / denom).nan_to_num(0.0)

    @torch.no_grad()
    def track_threshold(self, sample: torch.Tensor) -> None:
        th = self.ae.threshold
        th.copy_(sample if th < 0 else self.threshold_beta * th + (1 - self.threshold_beta) * sample)


TRAINERS.register(TopKTrainer.kind, TopKTrainer)

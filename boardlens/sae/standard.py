"""Standard trainer (paper era): ReLU SAE, loss = recon + lambda * mean ||f||_1."""

from __future__ import annotations

import torch

from boardlens.sae.base import Losses, SAETrainer, firing, recon_loss


class StandardTrainer(SAETrainer):
    kind = "standard"
    can_resample = True

    def sparsity(self, f: torch.Tensor) -> torch.Tensor:
        return f.sum(dim=-1).mean()  # f >= 0, so this is mean ||f||_1

    def losses(self, x: torch.Tensor) -> Losses:
        x_hat, f = self.ae(x)  # (N, d), (N, F)
        recon = recon_loss(x, x_hat, self.recon)
        sparsity = self.sparsity(f)
        total = recon + self.penalty_coeff() * self.sparsity_scale() * sparsity
        return Losses(total, recon, sparsity, torch.zeros((), device=x.device), x_hat, *firing(f), f.detach())

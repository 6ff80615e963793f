"""Standard trainer (paper era): ReLU SAE, loss = recon + lambda * mean ||f||_1."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from boardlens.registry import TRAINERS
from boardlens.sae.base import Losses, PenaltyOptions, SAETrainer, firing, recon_loss


@dataclass(frozen=True)
class StandardOptions(PenaltyOptions):
    resample_every: int = 0
    """Every this many steps, re-initialise latents silent for half as long (Anthropic's recipe; 0 = never)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.resample_every < 0:
            raise ValueError(f"resample_every must be >= 0, got {self.resample_every}")
        if self.resample_every and self.decay_start is not None:
            raise ValueError("resample_every and decay_start cannot be combined (as dictionary_learning)")


class StandardTrainer(SAETrainer):
    kind = "standard"
    Options = StandardOptions
    summary = "recon + lambda mean L1"
    dl_trainer = "StandardTrainer"

    def sparsity(self, f: torch.Tensor) -> torch.Tensor:
        return f.sum(dim=-1).mean()  # f >= 0, so this is mean ||f||_1

    def losses(self, x: torch.Tensor) -> Losses:
        x_hat, f = self.ae(x)  # (N, d), (N, F)
        recon = recon_loss(x, x_hat, self.recon)
        sparsity = self.sparsity(f)
        total = recon + self.penalty_coeff() * self.sparsity_scale() * sparsity
        return Losses(total, recon, sparsity, torch.zeros((), device=x.device), x_hat, *firing(f), f.detach())


TRAINERS.register(StandardTrainer.kind, StandardTrainer)

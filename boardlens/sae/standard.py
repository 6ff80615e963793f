"""Standard SAE trainer (paper era): loss = recon + lambda * mean ||f||_1."""

from __future__ import annotations

import torch

from boardlens.sae.base import SAETrainer


class StandardTrainer(SAETrainer):
    kind = "standard"

    def sparsity(self, f: torch.Tensor) -> torch.Tensor:
        return f.abs().sum(dim=-1).mean()

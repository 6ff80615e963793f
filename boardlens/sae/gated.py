"""Gated trainer (Rajamanoharan et al. 2404.16014), as dictionary_learning's GatedSAETrainer.

loss = recon(x, x_hat) + lambda * mean ||ReLU(pi_gate)||_1 + recon(x, x_hat_gate), where
x_hat_gate decodes ReLU(pi_gate) through a detached decoder (so the auxiliary term trains the
gate path only). Adam betas (0, 0.999). Reconstruction is squared error by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from boardlens.registry import TRAINERS
from boardlens.sae.base import Losses, PenaltyOptions, SAETrainer, firing, recon_loss


@dataclass(frozen=True)
class GatedOptions(PenaltyOptions):
    pass


class GatedTrainer(SAETrainer):
    kind = "gated"
    arch = "gated"
    Options = GatedOptions
    summary = "recon + lambda L1(ReLU(pi_gate)) + gate reconstruction, Adam betas (0, 0.999)"
    dl_trainer = "GatedSAETrainer"
    betas = (0.0, 0.999)
    default_recon = "mse"

    def sparsity(self, gate: torch.Tensor) -> torch.Tensor:
        return gate.sum(dim=-1).mean()  # gate = ReLU(pi_gate) >= 0: its L1 norm

    def losses(self, x: torch.Tensor) -> Losses:
        ae = self.ae
        f, gate = ae.encode_with_gate(x)  # (N, F) each
        x_hat = ae.decode(f)
        x_hat_gate = F.linear(gate, ae.decoder.weight.detach(), ae.decoder_bias.detach())
        recon = recon_loss(x, x_hat, self.recon)
        aux = recon_loss(x, x_hat_gate, self.recon)
        sparsity = self.sparsity(gate)
        total = recon + self.penalty_coeff() * self.sparsity_scale() * sparsity + aux
        return Losses(total, recon, sparsity, aux, x_hat, *firing(f), gate.detach())


TRAINERS.register(GatedTrainer.kind, GatedTrainer)

"""Gated SAE (Rajamanoharan et al. 2404.16014):
pi = W_enc (x - b_dec); f = 1[pi + b_gate > 0] * ReLU(exp(r_mag) pi + b_mag).

Zero biases, encoder tied to the decoder at init. SAELens "gated": W_enc b_gate b_mag r_mag W_dec b_dec.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from boardlens.registry import ARCHS
from boardlens.sae.archs.base import SAEModule, centred_linear


class GatedAutoEncoder(SAEModule):
    arch = "gated"
    tensor_names = frozenset({"decoder_bias", "encoder.weight", "r_mag", "gate_bias", "mag_bias",
                              "decoder.weight"})
    dl_class = "GatedAutoEncoder"
    saelens_arch = "gated"

    def __init__(self, d_in: int, d_sae: int) -> None:
        super().__init__(d_in, d_sae)
        self.decoder_bias = nn.Parameter(torch.zeros(d_in))
        self.encoder = nn.Linear(d_in, d_sae, bias=False)
        self.r_mag = nn.Parameter(torch.zeros(d_sae))
        self.gate_bias = nn.Parameter(torch.zeros(d_sae))
        self.mag_bias = nn.Parameter(torch.zeros(d_sae))
        self.decoder = nn.Linear(d_sae, d_in, bias=False)
        self.tie_to_unit_decoder()

    def encode_with_gate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, ReLU(pi_gate)), both (N, F); the second feeds the sparsity and auxiliary losses."""
        pi = centred_linear(x, self.encoder.weight, None, self.decoder_bias)  # (N, F)
        gate = (pi + self.gate_bias).relu_()  # ReLU(pi_gate): > 0 exactly where the gate is open
        mag = torch.addcmul(self.mag_bias, pi, self.r_mag.exp()).relu_()  # fused: fewer (N, F) passes
        # sign() of the non-negative gate is the 0/1 Heaviside mask; cheaper than where() or a
        # bool mask cast (measured), and detached: the gate gets no gradient through f.
        return mag * gate.detach().sign(), gate

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_with_gate(x)[0]

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return F.linear(f, self.decoder.weight, self.decoder_bias)

    @torch.no_grad()
    def scale_biases(self, s: float) -> None:
        for p in (self.decoder_bias, self.gate_bias, self.mag_bias):
            p.mul_(s)

    def to_saelens(self, t):
        return {"b_gate": t["gate_bias"], "b_mag": t["mag_bias"], "r_mag": t["r_mag"],
                "b_dec": t["decoder_bias"]}, {}, {}

    @classmethod
    def from_saelens(cls, w, cfg):
        return {"gate_bias": w["b_gate"], "mag_bias": w["b_mag"], "r_mag": w["r_mag"], "decoder_bias": w["b_dec"]}


ARCHS.register(GatedAutoEncoder.arch, GatedAutoEncoder)

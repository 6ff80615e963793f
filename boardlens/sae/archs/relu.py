"""The ReLU SAE of the paper era (Standard, p-anneal): f = ReLU(W_enc (x - b_dec) + b_enc).

Kaiming-uniform encoder, random unit decoder columns. SAELens "standard": W_enc b_enc W_dec b_dec.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from boardlens.registry import ARCHS
from boardlens.sae.archs.base import SAEModule, centred_linear, unit_columns


class AutoEncoder(SAEModule):
    arch = "relu"
    tensor_names = frozenset({"bias", "encoder.weight", "encoder.bias", "decoder.weight"})
    dl_class = "AutoEncoder"
    saelens_arch = "standard"

    def __init__(self, d_in: int, d_sae: int) -> None:
        super().__init__(d_in, d_sae)
        self.bias = nn.Parameter(torch.zeros(d_in))  # b_dec (d,)
        self.encoder = nn.Linear(d_in, d_sae, bias=True)  # torch's default (Kaiming-uniform) init
        self.decoder = nn.Linear(d_sae, d_in, bias=False)
        with torch.no_grad():
            self.decoder.weight.copy_(unit_columns(d_in, d_sae))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return centred_linear(x, self.encoder.weight, self.encoder.bias, self.bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_acts(x).relu_()  # in place: the (N, F) pre-activations are not kept

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return F.linear(f, self.decoder.weight, self.bias)

    @torch.no_grad()
    def scale_biases(self, s: float) -> None:
        self.bias.mul_(s)
        self.encoder.bias.mul_(s)

    def to_saelens(self, t):
        return {"b_enc": t["encoder.bias"], "b_dec": t["bias"]}, {}, {}

    @classmethod
    def from_saelens(cls, w, cfg):
        return {"encoder.bias": w["b_enc"], "bias": w["b_dec"]}


ARCHS.register(AutoEncoder.arch, AutoEncoder)

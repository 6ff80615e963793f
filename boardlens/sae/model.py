"""The ReLU sparse autoencoder of the paper era (dictionary_learning's `AutoEncoder`).

    f = ReLU(W_enc (x - b_dec) + b_enc)        x (N, d) -> f (N, dict)
    x_hat = W_dec f + b_dec                    f (N, dict) -> x_hat (N, d)

Tensor names follow dictionary_learning (`encoder.weight` (dict, d), `encoder.bias` (dict,),
`decoder.weight` (d, dict), `bias` (d,)), so its `ae.pt` files map one to one. Decoder
columns (one per latent) start as random unit vectors and are kept at unit norm by the
trainer's constrained Adam.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class AutoEncoder(nn.Module):
    arch = "relu"

    def __init__(self, d_in: int, d_sae: int) -> None:
        super().__init__()
        if d_in < 1 or d_sae < 1:
            raise ValueError(f"d_in and d_sae must be >= 1, got {d_in}, {d_sae}")
        self.d_in, self.d_sae = d_in, d_sae
        self.bias = nn.Parameter(torch.zeros(d_in))
        self.encoder = nn.Linear(d_in, d_sae, bias=True)  # torch's default (Kaiming-uniform) init
        self.decoder = nn.Linear(d_sae, d_in, bias=False)
        with torch.no_grad():
            w = torch.randn_like(self.decoder.weight)  # (d, dict)
            self.decoder.weight.copy_(w / w.norm(dim=0, keepdim=True))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.encoder(x - self.bias))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return self.decoder(f) + self.bias

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, d) -> (x_hat (N, d), f (N, dict))."""
        f = self.encode(x)
        return self.decode(f), f

    def constrained_params(self) -> list[nn.Parameter]:
        """Parameters whose columns (dim 0 norms) stay at unit norm."""
        return [self.decoder.weight]

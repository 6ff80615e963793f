"""TopK SAE (Gao et al. 2406.04093): f = the k largest of ReLU(W_enc (x - b_dec) + b_enc), per row.

Encoder tied to the unit decoder at init, zero biases. Buffers `k` (int32 scalar) and
`threshold` (float32 scalar, -1 until the trainer tracks it: the running mean of the smallest
active latent, used by BatchTopK at inference). SAELens "topk": W_enc b_enc W_dec b_dec, cfg k.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from boardlens.registry import ARCHS
from boardlens.sae.archs.base import SAEModule, centred_linear


class TopKAutoEncoder(SAEModule):
    arch = "topk"
    tensor_names = frozenset({"k", "threshold", "decoder.weight", "encoder.weight", "encoder.bias", "b_dec"})
    dl_class = "AutoEncoderTopK"
    saelens_arch = "topk"

    def __init__(self, d_in: int, d_sae: int, k: int) -> None:
        super().__init__(d_in, d_sae)
        if not 0 < k <= d_sae:
            raise ValueError(f"k must be in 1..d_sae ({d_sae}), got {k}")
        self.register_buffer("k", torch.tensor(k, dtype=torch.int32))
        self.register_buffer("threshold", torch.tensor(-1.0))
        self.decoder = nn.Linear(d_sae, d_in, bias=False)
        self.encoder = nn.Linear(d_in, d_sae, bias=True)
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.tie_to_unit_decoder()
        with torch.no_grad():
            self.encoder.bias.zero_()

    def post_relu(self, x: torch.Tensor) -> torch.Tensor:
        return centred_linear(x, self.encoder.weight, self.encoder.bias, self.b_dec).relu_()  # (N, F)

    def top_k(self, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: (values (N, k), indices (N, k)) of the k largest latents."""
        top = acts.topk(int(self.k), dim=-1, sorted=False)
        return top.values, top.indices

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        acts = self.post_relu(x)
        vals, idx = self.top_k(acts)
        return torch.zeros_like(acts).scatter_(-1, idx, vals)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return F.linear(f, self.decoder.weight, self.b_dec)

    def decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """decode() of a row-sparse f given as (values, indices) (N, k): N*k*d work, not N*F*d."""
        return F.embedding_bag(idx, self.decoder.weight.T, per_sample_weights=vals, mode="sum") + self.b_dec

    @torch.no_grad()
    def scale_biases(self, s: float) -> None:
        self.encoder.bias.mul_(s)
        self.b_dec.mul_(s)
        if self.threshold >= 0:
            self.threshold.mul_(s)

    def extra_config(self) -> dict:
        return {"k": int(self.k)}

    @classmethod
    def options_from_tensors(cls, tensors):
        return {"k": int(tensors["k"])}

    def to_saelens(self, t):
        return {"b_enc": t["encoder.bias"], "b_dec": t["b_dec"]}, {"k": int(t["k"])}, {}

    @classmethod
    def from_saelens(cls, w, cfg):
        return {"encoder.bias": w["b_enc"], "b_dec": w["b_dec"], "k": torch.tensor(int(cfg["k"]), dtype=torch.int32),
                "threshold": torch.tensor(-1.0)}


ARCHS.register(TopKAutoEncoder.arch, TopKAutoEncoder)

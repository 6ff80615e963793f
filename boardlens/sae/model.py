"""The SAE architectures, with dictionary_learning's tensor names so its `ae.pt` files map 1:1.

Shapes: x (N, d) activations, f (N, F) latents, F = d_sae. Every decoder is an
`nn.Linear(F, d)` whose weight (d, F) holds one column per latent, kept at unit norm by the
trainers. Every architecture offers `encode`, `decode`, `forward -> (x_hat, f)`,
`decoder_weight` and `scale_biases(s)`: an SAE trained on x / s becomes the same SAE for raw x
after `scale_biases(s)` (how activation normalisation is folded back, as dictionary_learning
does).

    relu        f = ReLU(W_enc (x - b_dec) + b_enc)                      paper era (Standard, p-anneal)
    gated       pi = W_enc (x - b_dec); f = 1[pi + b_gate > 0] * ReLU(exp(r_mag) pi + b_mag)
    topk        f = the k largest of ReLU(W_enc (x - b_dec) + b_enc), per row
    batch_topk  training: the N*k largest over the whole batch; inference: ReLU(.) * 1[. > theta]
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _CentredLinear(torch.autograd.Function):
    """W (x - c) + b for a constant x (N, d): W (F, d), b (F,) or None, c (d,).

    Same forward as `F.linear(x - c, W, b)`. The backward gives c its gradient as
    -(sum_n g_n) W, a (F,) x (F, d) product, where autograd would first form the (N, d) input
    gradient g W, a full (N, F) x (F, d) matmul: one of the six big matmuls of a ReLU SAE step.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, centre):
        xc = x - centre
        ctx.save_for_backward(xc, weight)
        return F.linear(xc, weight, bias)

    @staticmethod
    def backward(ctx, g):
        xc, weight = ctx.saved_tensors
        g_sum = g.sum(dim=0)  # (F,)
        grad_x = g @ weight if ctx.needs_input_grad[0] else None
        return grad_x, g.T @ xc, g_sum if ctx.needs_input_grad[2] else None, -(g_sum @ weight)


def centred_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   centre: torch.Tensor) -> torch.Tensor:
    """(N, d) -> (N, F): W (x - centre) + bias (see _CentredLinear)."""
    return _CentredLinear.apply(x, weight, bias, centre)


def _unit_columns(d_in: int, d_sae: int) -> torch.Tensor:
    w = torch.randn(d_in, d_sae)  # (d, F)
    return w / w.norm(dim=0, keepdim=True)


def _check_sizes(d_in: int, d_sae: int) -> None:
    if d_in < 1 or d_sae < 1:
        raise ValueError(f"d_in and d_sae must be >= 1, got {d_in}, {d_sae}")


class _SAE(nn.Module):
    """What the architectures share: forward = decode(encode(x)), the decoder's (d, F) weight."""

    arch = ""
    decoder: nn.Linear

    @property
    def decoder_weight(self) -> nn.Parameter:
        return self.decoder.weight

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, d) -> (x_hat (N, d), f (N, F))."""
        f = self.encode(x)
        return self.decode(f), f

    def extra_config(self) -> dict:
        """Architecture settings beyond the sizes (TopK: k)."""
        return {}

    def tie_to_unit_decoder(self) -> None:
        """Decoder columns random unit vectors, encoder = decoder^T (dictionary_learning's init)."""
        with torch.no_grad():
            w = _unit_columns(self.d_in, self.d_sae)
            self.decoder.weight.copy_(w)
            self.encoder.weight.copy_(w.T)


class AutoEncoder(_SAE):
    """The ReLU SAE of the paper era: Kaiming-uniform encoder, random unit decoder columns."""

    arch = "relu"

    def __init__(self, d_in: int, d_sae: int) -> None:
        super().__init__()
        _check_sizes(d_in, d_sae)
        self.d_in, self.d_sae = d_in, d_sae
        self.bias = nn.Parameter(torch.zeros(d_in))  # b_dec (d,)
        self.encoder = nn.Linear(d_in, d_sae, bias=True)  # torch's default (Kaiming-uniform) init
        self.decoder = nn.Linear(d_sae, d_in, bias=False)
        with torch.no_grad():
            self.decoder.weight.copy_(_unit_columns(d_in, d_sae))

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


class GatedAutoEncoder(_SAE):
    """Gated SAE (Rajamanoharan et al. 2404.16014); zero biases, encoder tied to the decoder at init."""

    arch = "gated"

    def __init__(self, d_in: int, d_sae: int) -> None:
        super().__init__()
        _check_sizes(d_in, d_sae)
        self.d_in, self.d_sae = d_in, d_sae
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


class TopKAutoEncoder(_SAE):
    """TopK SAE (Gao et al. 2406.04093): encoder tied to the unit decoder at init, zero biases.

    Buffers `k` (int32 scalar) and `threshold` (float32 scalar, -1 until the trainer tracks it:
    the running mean of the smallest active latent, used by BatchTopK at inference).
    """

    arch = "topk"

    def __init__(self, d_in: int, d_sae: int, k: int) -> None:
        super().__init__()
        _check_sizes(d_in, d_sae)
        if not 0 < k <= d_sae:
            raise ValueError(f"k must be in 1..d_sae ({d_sae}), got {k}")
        self.d_in, self.d_sae = d_in, d_sae
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


class BatchTopKAutoEncoder(TopKAutoEncoder):
    """BatchTopK SAE (Bussmann et al. 2412.06410): same tensors as TopK.

    Training keeps the N*k largest latents of the whole batch (`batch_top_k`); inference uses
    the learned global threshold, f = ReLU(.) * 1[ReLU(.) > threshold], so a row's code does
    not depend on the rest of its batch (before the threshold is tracked it is -1: plain ReLU).
    """

    arch = "batch_topk"

    def batch_top_k(self, acts: torch.Tensor) -> torch.Tensor:
        flat = acts.flatten()
        top = flat.topk(int(self.k) * acts.shape[0], sorted=False)
        return torch.zeros_like(flat).scatter_(-1, top.indices, top.values).view_as(acts)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        acts = self.post_relu(x)
        return acts * (acts > self.threshold)


ARCHS: dict[str, type[nn.Module]] = {
    cls.arch: cls for cls in (AutoEncoder, GatedAutoEncoder, TopKAutoEncoder, BatchTopKAutoEncoder)
}


def build_ae(arch: str, d_in: int, d_sae: int, **extra) -> nn.Module:
    """An SAE of the named architecture (extra: k for the TopK family)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown SAE architecture {arch!r}; known: {sorted(ARCHS)}")
    return ARCHS[arch](d_in, d_sae, **extra)

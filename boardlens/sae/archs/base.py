"""What every SAE architecture is: the interface, the shared init and the centred encoder.

Shapes: x (N, d) activations, f (N, F) latents, F = d_sae. Every decoder is an
`nn.Linear(F, d)` whose weight (d, F) holds one column per latent, kept at unit norm by the
trainers. Tensor names are dictionary_learning's, so its `ae.pt` files map 1:1. An
architecture module subclasses `SAEModule`, fills in the class attributes and hooks, and
registers itself: `ARCHS.register(MyAE.arch, MyAE)`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F


class _CentredLinear(torch.autograd.Function):
    """W (x - c) + b for a constant x (N, d): W (F, d), b (F,) or None, c (d,).

    Same forward as `F.linear(x - c, W, b)` (under autocast, in its dtype; the gradients are
    cast back to each input's dtype by autograd). The backward gives c its gradient as
    -(sum_n g_n) W, a (F,) x (F, d) product, where autograd would first form the (N, d) input
    gradient g W, a full (N, F) x (F, d) matmul: one of the six big matmuls of a ReLU SAE step.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, centre):
        xc = x - centre
        kind = x.device.type
        if torch.is_autocast_enabled(kind):  # cast as autocast casts F.linear, and save the casts:
            low = torch.get_autocast_dtype(kind)  # the backward's products run in that dtype too
            xc, weight = xc.to(low), weight.to(low)
            bias = None if bias is None else bias.to(low)
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


def unit_columns(d_in: int, d_sae: int) -> torch.Tensor:
    w = torch.randn(d_in, d_sae)  # (d, F)
    return w / w.norm(dim=0, keepdim=True)


class SAEModule(nn.Module):
    """The interface: encode, decode, forward -> (x_hat, f), decoder_weight, scale_biases(s)
    (an SAE trained on x / s becomes the same SAE for raw x: how activation normalisation is
    folded back, as dictionary_learning does), plus the file mappings below."""

    arch: ClassVar[str] = ""
    """Registry name, stored in every SAE file."""
    tensor_names: ClassVar[frozenset[str]] = frozenset()
    """The state dict's names (how a file without metadata is recognised; first match wins)."""
    dl_class: ClassVar[str] = ""
    """dictionary_learning class whose `from_pretrained` loads our ae.pt ('' = none)."""
    saelens_arch: ClassVar[str] = ""
    """SAELens `architecture` it exports as ('' = not exportable)."""
    decoder: nn.Linear

    def __init__(self, d_in: int, d_sae: int) -> None:
        super().__init__()
        if d_in < 1 or d_sae < 1:
            raise ValueError(f"d_in and d_sae must be >= 1, got {d_in}, {d_sae}")
        self.d_in, self.d_sae = d_in, d_sae

    @property
    def decoder_weight(self) -> nn.Parameter:
        return self.decoder.weight

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, d) -> (x_hat (N, d), f (N, F))."""
        f = self.encode(x)
        return self.decode(f), f

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scale_biases(self, s: float) -> None:
        raise NotImplementedError

    def extra_config(self) -> dict:
        """Constructor arguments beyond the sizes (TopK: k), as stored in configs."""
        return {}

    @classmethod
    def options_from_tensors(cls, tensors: dict[str, torch.Tensor]) -> dict:
        """The constructor's extra arguments, read from a state dict (TopK: k)."""
        return {}

    def to_saelens(self, t: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
        """Our tensors -> (SAELens weights beyond W_enc / W_dec, cfg.json fields, metadata fields)."""
        raise ValueError(f"{self.arch} SAEs have no SAELens layout")

    @classmethod
    def from_saelens(cls, w: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
        """SAELens weights + cfg.json -> our tensors beyond encoder.weight / decoder.weight."""
        raise ValueError(f"{cls.arch} SAEs have no SAELens layout")

    def tie_to_unit_decoder(self) -> None:
        """Decoder columns random unit vectors, encoder = decoder^T (dictionary_learning's init)."""
        with torch.no_grad():
            w = unit_columns(self.d_in, self.d_sae)
            self.decoder.weight.copy_(w)
            self.encoder.weight.copy_(w.T)

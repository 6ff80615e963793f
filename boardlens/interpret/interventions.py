"""Where a feature lives in the model, and how to set or scale it during a forward pass.

A `Site` is a set of features the model computes: an SAE's latents on the residual after
block L, or the MLP neurons of block L. Interventions are forward hooks on the model, so every
caller (a plain forward, greedy decoding of a chess move) sees the edited network unchanged.

- `clamp(j, values)`: feature j set to values[row] (B,) at every position of batch row `row`
  (FADE's faithfulness: k x the feature's max activation). For SAE latents the SAE's error
  term is kept: x' = x + (value - f_j(x)) W_dec[:, j], so only latent j changes.
- `scale(alpha)`: every feature multiplied by alpha (F,) (activation scaling; differentiable
  in alpha): x' = x + ((alpha - 1) * f(x)) @ W_dec.T for latents, neurons times alpha for MLPs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


class Site:
    """Features of one kind at one block; subclasses hook the right module."""

    name = ""
    layer = 0
    width = 0

    def _hook(self, model, edit: Callable[[torch.Tensor], torch.Tensor]):
        raise NotImplementedError

    @contextmanager
    def clamp(self, model, j: int, values: torch.Tensor) -> Iterator[None]:
        handle = self._hook(model, lambda t: self._set(t, j, values))
        try:
            yield
        finally:
            handle.remove()

    @contextmanager
    def scale(self, model, alpha: torch.Tensor) -> Iterator[None]:
        handle = self._hook(model, lambda t: self._scaled(t, alpha))
        try:
            yield
        finally:
            handle.remove()

    def _set(self, t, j, values):
        raise NotImplementedError

    def _scaled(self, t, alpha):
        raise NotImplementedError

    def scaled_logits(self, model, tokens: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """alpha (F,) -> logits (B, T, V) of `tokens` with the features scaled by alpha; what
        does not depend on alpha is computed once (activation scaling calls this per step)."""

        def run(alpha):
            with self.scale(model, alpha):
                return model(tokens)[0]

        return run


class SAESite(Site):
    """An SAE's latents on the residual after block `layer` (x (B, T, d) -> f (B, T, F))."""

    def __init__(self, ae, layer: int, name: str = "sae") -> None:
        self.ae, self.layer, self.name, self.width = ae.float().eval().requires_grad_(False), layer, name, ae.d_sae
        self.directions = ae.decoder_weight.detach().float()  # (d, F), column j = latent j

    def _hook(self, model, edit):
        def hook(_module, _inputs, output):
            return edit(output)

        return model.transformer.h[self.layer].register_forward_hook(hook)

    def _set(self, x, j, values):
        f = self.ae.encode(x.reshape(-1, x.shape[-1]).float()).reshape(*x.shape[:-1], -1)[..., j]  # (B, T)
        delta = values.to(x.dtype)[:, None] - f
        return x + delta[..., None] * self.directions[:, j].to(x.dtype)

    def _scaled(self, x, alpha):
        f = self.ae.encode(x.reshape(-1, x.shape[-1]).float())
        return x + (((alpha - 1) * f) @ self.directions.T).reshape(x.shape).to(x.dtype)

    def scaled_logits(self, model, tokens):
        """Blocks 0..layer and the codes run once; each call runs only the blocks after."""
        with torch.no_grad():
            _, resid = model(tokens, resid_layers=(self.layer,), stop_after=self.layer)
            x = resid[self.layer].float()
            f = self.ae.encode(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)  # (B, T, F)

        def run(alpha):
            return model.forward_from(self.layer, x + ((alpha - 1) * f) @ self.directions.T)

        return run


class MLPSite(Site):
    """The post-activation MLP neurons of block `layer` (the input of its c_proj)."""

    def __init__(self, model, layer: int) -> None:
        self.model, self.layer, self.name = model, layer, "mlp_neurons"
        self.width = model.transformer.h[layer].mlp.c_proj.in_features

    def _hook(self, model, edit):
        def hook(_module, inputs):
            return (edit(inputs[0]),)

        return model.transformer.h[self.layer].mlp.c_proj.register_forward_pre_hook(hook)

    def _set(self, h, j, values):
        h = h.clone()
        h[..., j] = values.to(h.dtype)[:, None]
        return h

    def _scaled(self, h, alpha):
        return h * alpha.to(h.dtype)


class ComponentSite(Site):
    """The attention and MLP outputs of every block, one scalar each (2 x n_layer features):
    activation scaling on raw model components rather than on SAE latents."""

    def __init__(self, model) -> None:
        self.model, self.layer, self.name = model, 0, "components"
        n = len(model.transformer.h)
        self.width = 2 * n
        self.labels = [f"{kind}{i}" for i in range(n) for kind in ("attn", "mlp")]

    @contextmanager
    def scale(self, model, alpha: torch.Tensor) -> Iterator[None]:
        handles = []
        for i, block in enumerate(model.transformer.h):
            for k, module in enumerate((block.attn, block.mlp)):
                a = alpha[2 * i + k]
                handles.append(module.register_forward_hook(lambda _m, _i, out, a=a: out * a.to(out.dtype)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def clamp(self, model, j, values):
        raise NotImplementedError("a component output is a vector: it can be scaled, not set")
        yield  # pragma: no cover

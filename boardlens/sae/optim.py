"""Constrained Adam (unit-norm decoder columns) and the LR / sparsity schedules."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class ConstrainedAdam(torch.optim.Adam):
    """Adam that keeps the columns (norms over dim 0) of `constrained` at unit norm.

    Before each step the gradient component parallel to each column is removed (so the step
    moves along the sphere's tangent), then (TopK trainers) all gradients are clipped to a
    global norm, and after the Adam step the columns are renormalised.
    """

    def __init__(self, params: Iterable, constrained: Iterable[torch.nn.Parameter],
                 clip_norm: float | None = None, **kw) -> None:
        params = list(params)
        try:  # the fused kernel: one pass per tensor, 7x faster than foreach on CPU (measured)
            super().__init__(params, fused=True, **kw)
        except RuntimeError:  # a device without a fused Adam
            super().__init__(params, **kw)
        self.constrained = list(constrained)
        self.clip_norm = clip_norm
        self._all = params

    @torch.no_grad()
    def step(self, closure=None):
        for p in self.constrained:
            if p.grad is None:
                continue
            unit = p / p.norm(dim=0, keepdim=True)
            p.grad -= (p.grad * unit).sum(dim=0, keepdim=True) * unit
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._all, self.clip_norm)
        loss = super().step(closure)
        for p in self.constrained:
            p /= p.norm(dim=0, keepdim=True)
        return loss


def lr_factor(step: int, warmup_steps: int, total_steps: int, decay_start: int | None = None,
              resample_every: int = 0) -> float:
    """LR multiplier at optimiser step `step` (0-based), as dictionary_learning's schedule.

    Linear warmup from 0 over `warmup_steps`; from `decay_start` a linear decay reaching 0 at
    `total_steps`. With resampling the warmup repeats after every resample instead.
    """
    if resample_every:
        return min((step % resample_every) / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    if decay_start is not None and step >= decay_start:
        return max(total_steps - step, 0) / (total_steps - decay_start)
    return 1.0


def ramp(step: int, steps: int) -> float:
    """Sparsity-penalty warmup: step / steps, capped at 1 (1 throughout when steps is 0)."""
    return min(step / steps, 1.0) if steps > 0 else 1.0

"""Constrained Adam (unit-norm decoder columns) and the linear LR warmup."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class ConstrainedAdam(torch.optim.Adam):
    """Adam that keeps the columns (norms over dim 0) of `constrained` at unit norm.

    Before each step the gradient component parallel to each column is removed (so the step
    moves along the sphere's tangent), and after it the columns are renormalised.
    """

    def __init__(self, params: Iterable, constrained: Iterable[torch.nn.Parameter], **kw) -> None:
        super().__init__(params, **kw)
        self.constrained = list(constrained)

    @torch.no_grad()
    def step(self, closure=None):
        for p in self.constrained:
            if p.grad is None:
                continue
            unit = p / p.norm(dim=0, keepdim=True)
            p.grad -= (p.grad * unit).sum(dim=0, keepdim=True) * unit
        loss = super().step(closure)
        for p in self.constrained:
            p /= p.norm(dim=0, keepdim=True)
        return loss


def warmup_factor(step: int, warmup_steps: int) -> float:
    """LR multiplier at optimiser step `step` (0-based): step / warmup, capped at 1 (upstream: 0 at step 0)."""
    if warmup_steps <= 0:
        return 1.0
    return min(step / warmup_steps, 1.0)

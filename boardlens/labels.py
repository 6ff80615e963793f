"""Board-state property (BSP) families, shared by every game.

A family maps a position to an integer tensor of shape (rows, cols) with values in
0..num_classes-1. One-hot encoding gives (rows, cols, num_classes) BSPs; masked classes
(e.g. "empty") are not counted. A binary family (num_classes == 2, class 0 masked) is one
BSP per cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Family:
    name: str
    shape: tuple[int, int]  # (rows, cols): (8, 8) board or (1, 1) scalar
    num_classes: int
    masked_classes: tuple[int, ...] = ()
    zeroed_bsps: tuple[int, ...] = ()
    """BSPs kept in the denominator that never count as holding (chess: the 32 (square, piece)
    BSPs of the initial position, which a position-in-string predictor could score)."""
    class_names: tuple[str, ...] = ()
    """A name per class value, for descriptions ('' or none: a binary family's BSP is named by
    its cell alone)."""

    @property
    def kept_classes(self) -> tuple[int, ...]:
        return tuple(c for c in range(self.num_classes) if c not in self.masked_classes)

    @property
    def num_bsps(self) -> int:
        return self.shape[0] * self.shape[1] * len(self.kept_classes)

    def bsp(self, index: int) -> tuple[int, int]:
        """BSP index -> (cell, class value)."""
        kept = self.kept_classes
        return index // len(kept), kept[index % len(kept)]

    def one_hot(self, values: torch.Tensor) -> torch.Tensor:
        """(N, rows, cols) int -> (N, num_bsps) bool, BSP index = (cell, kept class) row-major."""
        n = values.shape[0]
        flat = values.reshape(n, -1).long()  # (N, cells)
        kept = torch.tensor(self.kept_classes, device=flat.device)
        out = (flat[:, :, None] == kept).reshape(n, -1)
        if self.zeroed_bsps:
            out[:, list(self.zeroed_bsps)] = False
        return out

"""Auxiliary board objectives for `lm train`: linear heads that read the board from blocks' outputs.

    boardlens lm train --game othello --aux-head 3:weight=1.0,anneal=0.25 --aux-head 1:weight=0.5

Each head is one linear map from a block's output (B, T, C) to the class logits of every cell of
the game's board family (Othello `mine_theirs_empty`: 64 cells x 3 classes), trained by
cross-entropy at every labelled position beside the LM loss:

    loss = LM loss + sum_h w_h(step) * CE(head_h(resid_{layer_h}), board)

w_h is the head's weight until the last `anneal` fraction of the run's steps, then falls
linearly to 0 at the last step, so the end of training is the plain LM objective. The heads
only shape the residual stream: they are kept in the training state (resume) but never in the
exported model, whose card names them. No head may sit on the SAE layer itself (an SAE there
could find the head's rows, which would make coverage and reconstruction circular), and the
board the evaluation scores is always read by a fresh probe on fresh games.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from boardlens.parse import coerce


@dataclass(frozen=True)
class BoardHead:
    """One head's spec: `LAYER[:weight=W,anneal=F]`."""

    layer: int
    """Block whose output the head reads (0-based)."""
    weight: float = 1.0
    """Weight of its cross-entropy beside the LM loss."""
    anneal: float = 0.25
    """Fraction of the steps, at the end, over which the weight falls linearly to 0."""

    def __post_init__(self) -> None:
        if self.weight < 0 or not 0 <= self.anneal <= 1:
            raise ValueError(f"board head {self.spec}: weight must be >= 0 and anneal in [0, 1]")

    @classmethod
    def parse(cls, spec: str) -> BoardHead:
        layer, _, rest = spec.partition(":")
        if not layer.strip().isdigit():
            raise ValueError(f"board head {spec!r}: expected LAYER[:weight=W,anneal=F], e.g. 3:weight=0.5")
        opts = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or key not in ("weight", "anneal"):
                raise ValueError(f"board head {spec!r}: {item!r} is not weight=W or anneal=F")
            opts[key] = coerce(value, float, f"board head {key}")
        return cls(int(layer), **opts)

    @property
    def spec(self) -> str:
        return f"{self.layer}:weight={self.weight:g},anneal={self.anneal:g}"

    def weight_at(self, step: int, steps: int) -> float:
        """The weight at `step` (0-based) of a run of `steps`: constant, then linear to 0 at the
        last step (steps - 1)."""
        if self.anneal == 0:
            return self.weight
        left = (steps - 1 - step) / (self.anneal * steps)  # ~1 where the anneal starts, 0 at the end
        return self.weight * min(1.0, max(0.0, left))


class BoardHeads(nn.Module):
    """The heads of one run: one Linear(C, cells * classes) per spec."""

    def __init__(self, specs: tuple[BoardHead, ...], n_embd: int, cells: int, classes: int) -> None:
        super().__init__()
        self.specs, self.cells, self.classes = specs, cells, classes
        self.heads = nn.ModuleList(nn.Linear(n_embd, cells * classes) for _ in specs)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({s.layer for s in self.specs}))

    def losses(self, resid: dict[int, torch.Tensor], board: torch.Tensor) -> list[torch.Tensor]:
        """resid {layer: (B, T, C)}, board (B, T, cells) class ids (-100 = no label) -> each
        head's mean cross-entropy over labelled (position, cell) pairs."""
        out = []
        for spec, head in zip(self.specs, self.heads, strict=True):
            logits = head(resid[spec.layer].float())  # (B, T, cells * classes)
            out.append(F.cross_entropy(logits.reshape(-1, self.classes), board.reshape(-1), ignore_index=-100))
        return out

    def weights_at(self, step: int, steps: int) -> list[float]:
        return [s.weight_at(step, steps) for s in self.specs]

    def card(self) -> list[dict]:
        """What the exported model's config says of them."""
        return [asdict(s) for s in self.specs]

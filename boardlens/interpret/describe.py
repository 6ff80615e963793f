"""Ground-truth descriptions: each latent's best board-state property (BSP).

Shapes: K thresholds, F latents, B BSPs (all families concatenated, in the order of the label
dict). From the train split's counts the evaluator already makes (`count_on`: on (K, F, B),
active (K, F); total (B,) positions where each BSP holds), latent f's description is the BSP
b with the best F1 of "f active at threshold t" as a classifier of "b holds", maximised over
b and t, with that classifier's precision and recall. A latent never active on the train
split (dead there) has no description.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from boardlens.labels import Family
from boardlens.metrics.codes import Codes
from boardlens.metrics.supervised import THRESHOLDS, count_on, f1


class Descriptions(NamedTuple):
    """Per latent (F,): the best BSP's global column (-1: dead), its F1, precision, recall and
    threshold (a fraction of the latent's max activation); fmax (F,) max activation on the train
    split."""

    bsp: torch.Tensor  # (F,) int64, column in the concatenated families; -1 = no description
    f1: torch.Tensor  # (F,)
    precision: torch.Tensor  # (F,)
    recall: torch.Tensor  # (F,)
    threshold: torch.Tensor  # (F,) fraction of fmax
    fmax: torch.Tensor  # (F,)

    @property
    def alive(self) -> torch.Tensor:
        return self.bsp >= 0


@torch.no_grad()
def best_bsp(on: torch.Tensor, active: torch.Tensor, total: torch.Tensor, fmax: torch.Tensor,
             thresholds=THRESHOLDS) -> Descriptions:
    """on (K, F, B), active (K, F), total (B,) -> each latent's best (BSP, threshold) by F1."""
    K, F, _ = on.shape
    best = torch.full((F,), -1.0)
    bsp = torch.full((F,), -1, dtype=torch.long)
    ti = torch.zeros(F, dtype=torch.long)
    for i in range(K):  # one (F, B) F1 table at a time
        tp = on[i]
        score = f1(tp, active[i][:, None] - tp, total[None, :] - tp)
        val, arg = score.max(1)
        better = (val > best) & (active[i] > 0)
        best = torch.where(better, val, best)
        bsp = torch.where(better, arg, bsp)
        ti = torch.where(better, torch.full_like(ti, i), ti)
    alive = bsp >= 0
    idx = bsp.clamp_min(0)
    tp = on[ti, torch.arange(F), idx]
    act = active[ti, torch.arange(F)]
    precision = torch.where(alive, tp / act.clamp_min(1), torch.zeros(F))
    recall = torch.where(alive, tp / total[idx].clamp_min(1), torch.zeros(F))
    t = torch.tensor(thresholds, dtype=torch.float32)[ti]
    return Descriptions(bsp, best.clamp_min(0), precision, recall, torch.where(alive, t, torch.zeros(F)), fmax)


def describe(train: Codes, labels: dict[str, torch.Tensor], thresholds=THRESHOLDS) -> Descriptions:
    """Descriptions from the train split's codes and labels {family: (N, B_family) bool}."""
    lab = torch.cat(list(labels.values()), 1)
    fmax = train.fmax()
    on, active = count_on(train, lab, fmax, thresholds)
    return best_bsp(on, active, lab.sum(0).float(), fmax, thresholds)


class BSPIndex:
    """Global BSP columns <-> (family, index in family, name) for families concatenated in order."""

    def __init__(self, game, families: dict[str, Family]) -> None:
        self.game, self.families = game, families
        self.starts: dict[str, int] = {}
        start = 0
        for name, fam in families.items():
            self.starts[name] = start
            start += fam.num_bsps
        self.size = start

    def locate(self, column: int) -> tuple[Family, int]:
        for name, fam in self.families.items():
            s = self.starts[name]
            if s <= column < s + fam.num_bsps:
                return fam, column - s
        raise IndexError(f"BSP column {column} out of 0..{self.size - 1}")

    def name(self, column: int) -> str:
        fam, i = self.locate(column)
        return self.game.bsp_name(fam, i)

    def family_of(self, columns: torch.Tensor) -> list[str]:
        return [self.locate(int(c))[0].name if c >= 0 else "" for c in columns]

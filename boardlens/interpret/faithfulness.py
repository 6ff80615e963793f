"""FADE's faithfulness with the rules as the judge: does setting a latent make the model act as
if its description held?

For latent j described by BSP b (a BSP of a family the game's board editor can edit: `boardlens.games.edits`): draw `n_prefixes` (50) natural
positions of the test split where b does not hold and the edit is valid; for each factor k in
FACTORS set the latent to k x (its max activation) at every position of the prefix; a prefix
scores 1 when the model's greedy next move is legal on the board edited so that b holds but
not on the real board. R_k = mean score over prefixes;

    F = max(max_k R_k - R_0, 0) / (1 - R_0)      (NaN when R_0 = 1)

The graded variant scores each prefix by the F1 between the model's top-|legal| moves and the
edited board's legal set (Othello). FADE computes F only for latents whose clarity and
responsiveness are both >= 0.5 (its gate); `faithfulness` takes the latents to score, and the
caller applies the gate (`describe.py`'s report does).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from boardlens.games.edits import MoveTask
from boardlens.interpret.interventions import Site

FACTORS = (-50.0, -10.0, -1.0, 0.0, 1.0, 10.0, 50.0)


class Faithfulness(NamedTuple):
    latent: int
    bsp: int
    prefixes: int  # prefixes scored (fewer than asked when few valid edits exist)
    rates: list[float]  # R_k per factor, FACTORS order
    score: float  # F
    graded_rates: list[float] | None
    graded: float | None


def _f(rates: list[float], factors=FACTORS) -> float:
    r0 = rates[factors.index(0.0)]
    if r0 >= 1.0:
        return float("nan")
    return max(max(rates) - r0, 0.0) / (1.0 - r0)


def _f1(pred: set, truth: frozenset) -> float:
    tp = len(pred & truth)
    denom = len(pred) + len(truth)
    return 2 * tp / denom if denom else 0.0


def draw_tasks(boards, candidates: list[torch.Tensor], family, index: int, n: int,
               generator: torch.Generator) -> list[MoveTask]:
    """Up to n MoveTasks from candidate prefixes (b does not hold there), in a random order."""
    out = []
    for i in torch.randperm(len(candidates), generator=generator).tolist():
        task = boards.edit(candidates[i], family, index)
        if task is not None:
            out.append(task)
            if len(out) == n:
                break
    return out


@torch.no_grad()
def faithfulness(model, site: Site, boards, latent: int, bsp: int, fmax: float, tasks: list[MoveTask],
                 factors=FACTORS) -> Faithfulness:
    """Score one latent on its prepared tasks (all factors in one batch of len(tasks) x len(factors))."""
    if not tasks:
        return Faithfulness(latent, bsp, 0, [], float("nan"), None, None)
    values = torch.tensor([k * fmax for k in factors]).repeat_interleave(len(tasks))
    with site.clamp(model, latent, values):
        moves, ranked = boards.play(model, [t.tokens for t in tasks], len(factors), site.layer - 1,
                                    [len(t.edited) for t in tasks] * len(factors))
    n = len(tasks)
    rates, graded = [], [] if ranked is not None else None
    for i in range(len(factors)):
        hits = [moves[i * n + b] in t.edited and moves[i * n + b] not in t.real for b, t in enumerate(tasks)]
        rates.append(sum(hits) / n)
        if ranked is not None:
            graded.append(sum(_f1(ranked[i * n + b], t.edited) for b, t in enumerate(tasks)) / n)
    return Faithfulness(latent, bsp, n, rates, _f(rates, factors), graded,
                        _f(graded, factors) if graded is not None else None)

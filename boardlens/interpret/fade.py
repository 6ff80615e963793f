"""FADE's clarity, responsiveness and purity, with the board's ground truth as the rater.

FADE (Puri et al. 2025, `fade-language` 0.1.2) asks an LLM to write text expressing a
description and to rate text for it. Here a description is a BSP b (`describe.py`), one
sample is one position, and the rating is exact: 2 where b holds, 0 where it does not.
Shapes: N natural positions (the test split's labelled positions), F latents, B BSPs.

- clarity: positives = positions where b holds, drawn by rejection sampling from freshly
  generated games (the test split: games the description never saw), up to `n_pos`;
  negatives = `n_neg` natural positions, unlabelled (they include b at its base rate p, so a
  perfect detector scores 1 - p); score |2 AUROC - 1|. `clarity_labelled` drops the negatives
  where b holds (a perfect detector scores 1).
- responsiveness / purity: FADE's stratified sample of `n_sample` (500) natural positions per
  latent: 112 each from the activation-percentile bins [0, 50), [50, 75), [75, 95), [95, 100]
  (ties broken at random) and the rest (52) the top activations; responsiveness = |2 AUROC - 1|
  of activation against b, purity = average precision with b positive. The `_population`
  versions use all N positions; `prevalence` (b's share of them) is AP's chance level.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch

from boardlens.interpret.describe import Descriptions
from boardlens.interpret.ranking import auroc_ap, gini
from boardlens.metrics.codes import Codes, Entries

BINS = ((0.0, 0.5), (0.5, 0.75), (0.75, 0.95), (0.95, 1.0))  # FADE's activation-percentile bins
PER_BIN = 112


class FadeScores(NamedTuple):
    """Per latent (F,), NaN where undefined (no description, or too few positives)."""

    clarity: torch.Tensor
    clarity_labelled: torch.Tensor
    clarity_positives: torch.Tensor  # (F,) int64 positives drawn for clarity
    responsiveness: torch.Tensor
    purity: torch.Tensor
    responsiveness_population: torch.Tensor
    purity_population: torch.Tensor
    prevalence: torch.Tensor  # b's share of the N natural positions


def column_blocks(codes: Codes, block: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(c0, c1, dense codes (N, c1 - c0)) for consecutive blocks of latents.

    Stored (sparse) codes are scattered block by block from their entries; dense ones (MLP
    neurons, a random SAE) are encoded once into one (N, F) tensor."""
    F = codes.width
    if codes.dense:
        full = torch.cat([p for _, p in codes.pieces()]) if codes.n else torch.zeros(0, F)
        for c0 in range(0, F, block):
            yield c0, min(F, c0 + block), full[:, c0 : c0 + block]
        return
    parts = [(sl.start, e) for sl, e in codes.pieces()]
    for c0 in range(0, F, block):
        c1 = min(F, c0 + block)
        out = torch.zeros(codes.n, c1 - c0)
        for start, e in parts:
            assert isinstance(e, Entries)
            keep = (e.cols >= c0) & (e.cols < c1)
            out[e.rows[keep] + start, e.cols[keep] - c0] = e.vals[keep]
        yield c0, c1, out


def stratified_ranks(n: int, n_sample: int, generator: torch.Generator) -> torch.Tensor:
    """Ranks (ascending, 0..n-1) of FADE's stratified sample: PER_BIN from each bin of BINS and
    the rest from the top; fewer where n is small (every rank at most once)."""
    top = max(n_sample - PER_BIN * len(BINS), 0)
    top = min(top, n)
    ranks = [torch.arange(n - top, n)]
    for lo, hi in BINS:
        a, b = int(lo * n), min(int(hi * n), n - top)
        if b > a:
            ranks.append(a + torch.randperm(b - a, generator=generator)[:PER_BIN])
    return torch.cat(ranks)


@torch.no_grad()
def fade_scores(codes: Codes, labels: torch.Tensor, desc: Descriptions, n_pos: int = 200, n_neg: int = 1000,
                n_sample: int = 500, min_positives: int = 10, seed: int = 0, block: int = 256) -> FadeScores:
    """Scores of every described latent on natural positions: codes (N, F) of the test split,
    labels (N, B) bool (all families concatenated, as `desc.bsp` indexes them)."""
    N, F = codes.n, codes.width
    g = torch.Generator().manual_seed(seed)
    nan = torch.full((F,), float("nan"))
    out = {k: nan.clone() for k in FadeScores._fields}
    out["clarity_positives"] = torch.zeros(F, dtype=torch.long)
    prevalence = labels.float().mean(0) if N else torch.zeros(labels.shape[1])
    neg_rows = torch.randperm(N, generator=g)[:n_neg]
    tie_break = torch.randperm(N, generator=g)  # one random order: sorting it stably breaks ties at random
    ranks = stratified_ranks(N, n_sample, g).sort().values
    # positives per BSP, drawn once per described BSP (rejection sampling from the test games)
    described = desc.bsp[desc.bsp >= 0].unique()
    pos_rows = {}
    for b in described.tolist():
        rows = labels[:, b].nonzero().squeeze(1)
        pos_rows[b] = rows[torch.randperm(rows.numel(), generator=g)[:n_pos]]
    for c0, c1, acts in column_blocks(codes, block):
        cols = torch.arange(c0, c1)
        bsp = desc.bsp[c0:c1]
        live = (bsp >= 0).nonzero().squeeze(1)
        if live.numel() == 0:
            continue
        lat, b = cols[live], bsp[live]
        a = acts[:, live].T.contiguous()  # (c, N)
        lab = labels[:, b].T.contiguous()  # (c, N) bool
        out["prevalence"][lat] = prevalence[b]
        # clarity: [positives (padded to n_pos, weight 0) | the shared negatives]
        c = lat.numel()
        pos = torch.zeros(c, n_pos, dtype=torch.long)
        wpos = torch.zeros(c, n_pos)
        for i, bi in enumerate(b.tolist()):
            r = pos_rows[bi]
            pos[i, : r.numel()], wpos[i, : r.numel()] = r, 1.0
        rows = torch.cat([pos, neg_rows.expand(c, -1)], 1)
        is_pos = torch.cat([torch.ones(c, n_pos, dtype=torch.bool), torch.zeros(c, neg_rows.numel(), dtype=torch.bool)], 1)
        scores = a.gather(1, rows)
        w_unlab = torch.cat([wpos, torch.ones(c, neg_rows.numel())], 1)
        w_lab = torch.cat([wpos, (~lab.gather(1, neg_rows.expand(c, -1))).float()], 1)
        enough = wpos.sum(1) >= min_positives
        out["clarity_positives"][lat] = wpos.sum(1).long()
        au, _ = auroc_ap(scores, is_pos, w_unlab)
        out["clarity"][lat] = torch.where(enough, gini(au), float("nan"))
        au, _ = auroc_ap(scores, is_pos, w_lab)
        out["clarity_labelled"][lat] = torch.where(enough, gini(au), float("nan"))
        # one sort per block serves both: ascending, ties broken at random (a stable sort of
        # the randomly permuted rows); the stratified sample's sorted ranks stay ascending
        vals, order = torch.sort(a[:, tie_break], dim=1, stable=True)
        lab_sorted = lab.gather(1, tie_break[order])  # (c, N)
        au, ap = auroc_ap(vals[:, ranks], lab_sorted[:, ranks], presorted=True)
        out["responsiveness"][lat], out["purity"][lat] = gini(au), ap
        au, ap = auroc_ap(vals, lab_sorted, presorted=True)
        out["responsiveness_population"][lat], out["purity_population"][lat] = gini(au), ap
    return FadeScores(**out)

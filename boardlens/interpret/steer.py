"""Activation scaling (Stoehr et al. 2024) with the rules as the judge.

For a board BSP b: natural positions where b holds, each paired with the same board edited so
that b does not hold (the disc takes the other colour; the piece leaves its square), so the
pair differs in b alone. M+ = moves legal on the real board only, M- = legal on the edited
board only (a pair with either empty is dropped). The model reads the real transcript; one
scalar alpha per feature (SAE latent, or attention / MLP output of each block) multiplies
that feature, learnt by Adam on

    effectiveness   relu(margin - (lse logit(M-) - lse logit(M+)))    flip to "b does not hold"
    faithfulness    KL(clean || steered) over the moves whose legality the edit leaves alone
                    (both renormalised on that set)
    minimality      sum |alpha - 1|

loss = mean effectiveness + kl_weight * mean KL + l1_weight * minimality. A pair is flipped
when lse logit(M-) > lse logit(M+). Reported on held-out pairs: the flip rate before and after,
the KL, and the scalars that moved (|alpha - 1| > moved_at). A move's logit is the model's
next-token logit (Othello) or its SAN's log-probability, character by character up to the
space that ends it (chess); the KL set is every other move token (Othello) or the moves legal
on both boards (chess, up to 12 of them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from boardlens.interpret.interventions import Site


@dataclass(frozen=True)
class SteerConfig:
    margin: float = 2.0  # nats: steered M- must beat M+ by this much before the hinge is quiet
    kl_weight: float = 1.0  # one nat of collateral KL costs as much as one nat of missing margin
    l1_weight: float = 0.002  # per unit of |alpha - 1|: 4096 latents moved by 0.1 cost 0.8
    steps: int = 150
    lr: float = 0.05
    moved_at: float = 0.1
    pairs: int = 128  # pairs drawn (half train, half test)
    seed: int = 0


class Pair(NamedTuple):
    tokens: torch.Tensor  # (n,) the real transcript's prefix (b holds there)
    plus: list  # moves legal only on the real board
    minus: list  # moves legal only on the edited board (b does not hold)
    same: list  # moves legal on both boards


def draw_pairs(boards, prefixes: list[torch.Tensor], family, index: int, n: int,
               generator: torch.Generator) -> list[Pair]:
    """Up to n pairs from prefixes where b holds, in a random order."""
    out = []
    for i in torch.randperm(len(prefixes), generator=generator).tolist():
        task = boards.edit(prefixes[i], family, index, holds=False)
        if task is None:
            continue
        plus, minus = sorted(task.real - task.edited), sorted(task.edited - task.real)
        if plus and minus:
            out.append(Pair(prefixes[i], plus, minus, sorted(task.real & task.edited)))
            if len(out) == n:
                break
    return out


def _margin(z: torch.Tensor, b) -> torch.Tensor:
    neg = torch.finfo(z.dtype).min
    return torch.logsumexp(z.masked_fill(~b.minus, neg), -1) - torch.logsumexp(z.masked_fill(~b.plus, neg), -1)


def _kl_same(clean: torch.Tensor, z: torch.Tensor, b) -> torch.Tensor:
    neg = torch.finfo(z.dtype).min
    lp = F.log_softmax(clean.masked_fill(~b.same, neg), -1)
    lq = F.log_softmax(z.masked_fill(~b.same, neg), -1)
    return (lp.exp() * (lp - lq)).masked_fill(~b.same, 0).sum(-1)


class SteerResult(NamedTuple):
    alpha: torch.Tensor  # (F,)
    train_pairs: int
    test_pairs: int
    flip_before: float  # held-out pairs flipped with alpha = 1 (the clean model)
    flip_after: float  # held-out pairs flipped with the learnt alpha
    train_flip_after: float
    kl: float  # mean held-out KL over unchanged-legality moves, nats
    moved: list[int]  # features with |alpha - 1| > moved_at, largest change first
    config: dict


def steer(model, site: Site, boards, pairs: list[Pair], cfg: SteerConfig = SteerConfig()) -> SteerResult:
    """Learn alpha on the first half of `pairs`, report on the second half; `boards` (the
    game's, `boards.py`) turns pairs into model inputs and move scores."""
    if len(pairs) < 4:
        raise ValueError(f"need at least 4 pairs (2 to train, 2 to test), got {len(pairs)}")
    model.eval().requires_grad_(False)
    half = len(pairs) // 2
    train, test = boards.move_batch(pairs[:half], model.config.vocab_size), \
        boards.move_batch(pairs[half:], model.config.vocab_size)
    run_train, run_test = site.scaled_logits(model, train.tokens), site.scaled_logits(model, test.tokens)
    with torch.no_grad():
        clean_train, clean_test = train.scores(model(train.tokens)[0]), test.scores(model(test.tokens)[0])
    alpha = torch.ones(site.width, requires_grad=True)
    opt = torch.optim.Adam([alpha], lr=cfg.lr)
    for _ in range(cfg.steps):
        z = train.scores(run_train(alpha))
        loss = (F.relu(cfg.margin - _margin(z, train)).mean() + cfg.kl_weight * _kl_same(clean_train, z, train).mean()
                + cfg.l1_weight * (alpha - 1).abs().sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    alpha = alpha.detach()
    with torch.no_grad():
        z_test, z_train = test.scores(run_test(alpha)), train.scores(run_train(alpha))
    change = (alpha - 1).abs()
    moved = [int(i) for i in torch.argsort(change, descending=True) if change[i] > cfg.moved_at]
    return SteerResult(alpha, half, len(pairs) - half,
                       float((_margin(clean_test, test) > 0).float().mean()),
                       float((_margin(z_test, test) > 0).float().mean()),
                       float((_margin(z_train, train) > 0).float().mean()),
                       float(_kl_same(clean_test, z_test, test).mean()), moved, asdict(cfg))

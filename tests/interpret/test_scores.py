"""Ranking metrics against their definitions; descriptions and FADE scores against planted truth."""

import itertools

import pytest
import torch

from boardlens.interpret.describe import describe
from boardlens.interpret.fade import fade_scores, stratified_ranks
from boardlens.interpret.ranking import auroc_ap
from boardlens.metrics.codes import Codes


def _auroc_by_pairs(s, y, w):
    pos = [(a, wa) for a, b, wa in zip(s, y, w, strict=True) if b and wa > 0]
    neg = [(a, wa) for a, b, wa in zip(s, y, w, strict=True) if not b and wa > 0]
    num = sum(wp * wn * ((p > n) + 0.5 * (p == n)) for (p, wp), (n, wn) in itertools.product(pos, neg))
    return num / (sum(w for _, w in pos) * sum(w for _, w in neg))


def _ap_by_thresholds(s, y, w):
    """scikit-learn's definition: sum over distinct thresholds (high to low) of dR * P."""
    total = sum(wi for b, wi in zip(y, w, strict=True) if b)
    ap, prev = 0.0, 0.0
    for t in sorted({a for a, wi in zip(s, w, strict=True) if wi > 0}, reverse=True):
        sel = [(b, wi) for a, b, wi in zip(s, y, w, strict=True) if a >= t and wi > 0]
        tp = sum(wi for b, wi in sel if b)
        r = tp / total
        ap += (r - prev) * tp / sum(wi for _, wi in sel)
        prev = r
    return ap


@pytest.mark.parametrize("seed", range(4))
def test_auroc_ap_match_definitions_with_ties_and_weights(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 5, (6, 50), generator=g).float()  # many ties, as sparse codes have
    labels = torch.rand(6, 50, generator=g) < 0.3
    weights = (torch.rand(6, 50, generator=g) < 0.8).float()
    au, ap = auroc_ap(scores, labels, weights)
    for i in range(6):
        s, y, w = scores[i].tolist(), labels[i].tolist(), weights[i].tolist()
        assert au[i].item() == pytest.approx(_auroc_by_pairs(s, y, w), abs=1e-6)
        assert ap[i].item() == pytest.approx(_ap_by_thresholds(s, y, w), abs=1e-6)
    sorted_scores, order = scores.sort(1)
    au2, ap2 = auroc_ap(sorted_scores, labels.gather(1, order), weights.gather(1, order), presorted=True)
    assert torch.allclose(au, au2) and torch.allclose(ap, ap2)


def test_auroc_undefined_without_both_classes():
    au, ap = auroc_ap(torch.rand(2, 10), torch.tensor([[True] * 10, [False] * 10]))
    assert torch.isnan(au).all() and ap[0] == 1.0 and torch.isnan(ap[1])


def test_stratified_sample_follows_fade_bins():
    r = stratified_ranks(10_000, 500, torch.Generator().manual_seed(0))
    assert r.numel() == 500 and r.unique().numel() == 500
    assert ((r >= 10_000 - 52).sum()) == 52  # the rest from the top
    for lo, hi in ((0, 5000), (5000, 7500), (7500, 9500)):
        assert ((r >= lo) & (r < hi)).sum() == 112


def _planted(n=6000, b=12, seed=0):
    """Labels (n, b) with prevalences from 5% to 60%; an oracle whose latent j is BSP j's
    indicator (times a positive magnitude), and a random dense encoder."""
    g = torch.Generator().manual_seed(seed)
    prev = torch.linspace(0.05, 0.6, b)
    labels = torch.rand(n, b, generator=g) < prev
    oracle = labels.float() * (0.5 + torch.rand(n, b, generator=g))
    noise = torch.rand(n, 3 * b, generator=g)
    return labels, oracle, noise, prev


def test_oracle_latents_score_as_fade_defines_perfect():
    labels, oracle, _, prev = _planted()
    half = labels.shape[0] // 2
    ident = lambda f: f  # noqa: E731
    desc = describe(Codes(ident, oracle[:half]), {"fam": labels[:half]})
    assert desc.bsp.tolist() == list(range(labels.shape[1]))  # each latent's own BSP
    assert torch.allclose(desc.f1, torch.ones(labels.shape[1]))
    s = fade_scores(Codes(ident, oracle[half:]), labels[half:], desc)
    p = labels[half:].float().mean(0)
    assert torch.allclose(s.responsiveness, torch.ones_like(p)) and torch.allclose(s.purity, torch.ones_like(p))
    assert torch.allclose(s.responsiveness_population, torch.ones_like(p))
    assert torch.allclose(s.clarity_labelled, torch.ones_like(p))
    # against unlabelled natural negatives a perfect detector scores 1 - p (sampling noise aside)
    assert torch.allclose(s.clarity, 1 - p, atol=0.04)
    assert torch.allclose(s.prevalence, p)


def test_random_latents_score_near_chance():
    labels, _, noise, _ = _planted(seed=1)
    half = labels.shape[0] // 2
    ident = lambda f: f  # noqa: E731
    desc = describe(Codes(ident, noise[:half]), {"fam": labels[:half]})
    s = fade_scores(Codes(ident, noise[half:]), labels[half:], desc)
    assert s.clarity.max() < 0.25 and s.responsiveness.max() < 0.25
    assert s.responsiveness_population.max() < 0.1
    assert (s.purity - s.prevalence).abs().max() < 0.15  # AP at chance is the prevalence


def test_sparse_and_dense_codes_give_the_same_scores():
    labels, oracle, _, _ = _planted(n=3000, seed=2)
    sparse = oracle * (torch.rand_like(oracle) < 0.04)  # ~1% nonzero: stored as entries
    ident = lambda f: f  # noqa: E731
    sparse_codes = Codes(ident, sparse)
    dense_codes = Codes(ident, sparse)
    dense_codes.stored = None  # the path of dense codes (MLP neurons, a random SAE): encoded per pass
    assert not sparse_codes.dense
    desc = describe(sparse_codes, {"fam": labels})
    a, b = fade_scores(sparse_codes, labels, desc), fade_scores(dense_codes, labels, desc)
    for k in a._fields:
        assert torch.allclose(getattr(a, k).float(), getattr(b, k).float(), equal_nan=True), k

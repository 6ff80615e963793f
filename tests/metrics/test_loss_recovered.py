"""Loss recovered against a direct computation with the full patched forward."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from boardlens.lm.model import GPT, GPTConfig
from boardlens.metrics.loss_recovered import LossBaseline
from boardlens.registry import GAMES
from boardlens.sae.archs.relu import AutoEncoder

LAYER = 1


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x, x


class _Zero(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x), x


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=61, block_size=59, n_layer=3, n_head=2, n_embd=32)).eval()
    g = GAMES["othello"].random_games(np.random.default_rng(0), 24)
    tokens = torch.from_numpy(g.tokens)
    with torch.no_grad():
        _, resid = model(tokens, resid_layers=(LAYER,))
    games = [(tokens[i, : int(n)], resid[LAYER][i, : int(n)]) for i, n in enumerate(g.lengths)]
    return model, games, LossBaseline(model, LAYER, games, batch_games=5)


def _direct_ce(model, games, patch) -> float:
    """Mean next-token CE with the full forward, game by game."""
    total = count = 0
    with torch.no_grad():
        for tok, _ in games:
            logits, _ = model(tok[None], patch={LAYER: patch} if patch else None)
            total += F.cross_entropy(logits[0, :-1], tok[1:], reduction="sum").item()
            count += tok.numel() - 1
    return total / count


def test_identity_recovers_everything_and_zeros_nothing(setup):
    model, games, base = setup
    ident, zero = base.score(_Identity()), base.score(_Zero())
    assert ident.recovered == pytest.approx(1.0, abs=1e-5) and ident.kl == pytest.approx(0.0, abs=1e-6)
    assert zero.recovered == pytest.approx(0.0, abs=1e-5)
    assert base.ce_clean == pytest.approx(_direct_ce(model, games, None), rel=1e-5)
    assert base.ce_zero == pytest.approx(_direct_ce(model, games, torch.zeros_like), rel=1e-5)


def test_an_sae_matches_the_patched_forward(setup):
    model, games, base = setup
    torch.manual_seed(1)
    ae = AutoEncoder(32, 64).eval()
    got = base.score(ae)
    direct = _direct_ce(model, games, lambda x: ae(x)[0])
    assert got.ce_sae == pytest.approx(direct, rel=1e-5)
    assert got.recovered == pytest.approx((base.ce_zero - direct) / (base.ce_zero - base.ce_clean), rel=1e-4)
    assert got.kl > 0

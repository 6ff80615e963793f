"""GPT forward options, bundled checkpoint format, Othello LM data."""

import json

import numpy as np
import pytest
import torch

from boardlens.games.othello import lm_data
from boardlens.games.othello.engine import play_random
from boardlens.lm.checkpoint import CheckpointError, load_model, save_model
from boardlens.lm.model import GPT, GPTConfig

CFG = GPTConfig(vocab_size=61, block_size=59, n_layer=3, n_head=2, n_embd=16)


def test_resid_stop_and_patch():
    torch.manual_seed(0)
    m = GPT(CFG).eval()
    x = torch.randint(0, 61, (2, 59))
    logits, resid = m(x, resid_layers=(0, 1))
    assert logits.shape == (2, 59, 61) and resid[1].shape == (2, 59, 16)
    none, early = m(x, resid_layers=(1,), stop_after=1)
    assert none is None and torch.allclose(early[1], resid[1])
    same, _ = m(x, patch={1: lambda h: h})
    assert torch.allclose(same, logits)
    zeroed, _ = m(x, patch={1: torch.zeros_like})
    assert not torch.allclose(zeroed, logits)
    with pytest.raises(ValueError):
        m(torch.zeros(1, 60, dtype=torch.long))


def test_checkpoint_round_trip_and_errors(tmp_path):
    m = GPT(CFG).eval()
    save_model(m, tmp_path / "m", {"game": "othello", "sae_layer": 1})
    m2, meta = load_model(tmp_path / "m")
    x = torch.randint(0, 61, (1, 59))
    assert torch.equal(m(x)[0], m2(x)[0]) and meta["sae_layer"] == 1
    # Truncated weights: a clear error naming the file.
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{nope")
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing")


def test_random_control_is_deterministic(tmp_path):
    (tmp_path / "r").mkdir()
    cfg = {"format": "boardlens-gpt", "gpt": CFG.to_dict(), "game": "othello", "random_init_seed": 3}
    (tmp_path / "r" / "config.json").write_text(json.dumps(cfg))
    a, _ = load_model(tmp_path / "r")
    b, _ = load_model(tmp_path / "r")
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(v, w), k


def test_training_batch_targets_and_accuracy_bounds():
    x, y = lm_data.training_batch(np.random.default_rng(0), 8)
    assert x.shape == y.shape == (8, 59)
    assert torch.equal(x[:, 1:][y[:, :-1] != -100], y[:, :-1][y[:, :-1] != -100])
    acc = lm_data.legal_move_accuracy(GPT(CFG).eval(), play_random(10, seed=1))
    assert 0 <= acc <= 1


def test_bundled_models_load():
    from boardlens.services.config import DEFAULT_MODEL

    for folder in (DEFAULT_MODEL, DEFAULT_MODEL + "-random"):
        m, meta = load_model(folder)
        assert meta["game"] == "othello" and 0 <= meta["sae_layer"] < m.config.n_layer


def test_linear_probe_reads_the_board_from_the_trained_model_only():
    from boardlens.lm.checkpoint import load_model
    from boardlens.lm.probe import probe_board
    from boardlens.services.config import DEFAULT_MODEL

    results = {}
    for name in ("", "-random"):
        model, cfg = load_model(DEFAULT_MODEL + name)
        results[name] = probe_board(model, "othello", cfg["sae_layer"], train_games=150, test_games=60,
                                    steps=150)
    trained, rand = results[""], results["-random"]
    assert trained.test_positions > 2000 and trained.family == "mine_theirs_empty"
    assert trained.baseline == rand.baseline  # same games, same labels
    assert trained.accuracy > rand.accuracy + 0.1 and trained.accuracy > trained.baseline + 0.2

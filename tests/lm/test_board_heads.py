"""Auxiliary board heads in `lm train`: the schedule ends on the plain LM objective, a head on the
SAE layer is refused, a tiny model trained with a head reads the board better than without one
(a fresh probe on fresh games), and the exported model holds no head."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from boardlens.lm.board_heads import BoardHead
from boardlens.lm.checkpoint import CheckpointError, load_model
from boardlens.lm.probe import probe_board
from boardlens.lm.train import LMTrainConfig, train


@pytest.fixture(scope="module")
def toy_game():
    """The tic-tac-toe plugin (tests/plugins/toy.py), registered in this process for these tests
    only: later tests in the same worker see the built-ins alone (e.g. the README's trainer table)."""
    import importlib
    import sys

    from boardlens.registry import ARCHS, GAMES, TRAINERS

    registries = (ARCHS, TRAINERS, GAMES)
    for r in registries:
        r.names()  # the built-ins loaded first, so that what is saved is them
    saved = [dict(r._items) for r in registries]
    if "tests.plugins.toy" in sys.modules:  # an earlier test imported it: register it again
        importlib.reload(sys.modules["tests.plugins.toy"])
    else:
        import tests.plugins.toy  # noqa: F401 - registers the game, its trainer and architecture
    yield "tictactoe"
    for r, items in zip(registries, saved, strict=True):
        r._items.clear()
        r._items.update(items)


def test_the_weight_is_constant_then_falls_to_zero_at_the_last_step():
    h = BoardHead.parse("3:weight=0.5,anneal=0.25")
    assert (h.layer, h.weight, h.anneal) == (3, 0.5, 0.25)
    w = [h.weight_at(s, 100) for s in range(100)]
    assert w[:75] == [0.5] * 75 and w[-1] == 0.0 and all(a >= b for a, b in zip(w, w[1:], strict=False))
    assert BoardHead.parse("2").weight_at(99, 100) == 0.0  # default anneal 0.25
    assert BoardHead.parse("2:anneal=0").weight_at(99, 100) == 1.0


@pytest.mark.parametrize("spec,error", [
    ("x", "expected LAYER"), ("3:foo=1", "is not weight=W"), ("3:weight=-1", "weight must be >= 0"),
    ("4", "not the SAE layer 4"), ("9", "must be in 0..7"),
])
def test_bad_heads_are_refused(spec, error):
    with pytest.raises(ValueError, match=error):
        LMTrainConfig(game="othello", n_layer=8, sae_layer=4, board_heads=(spec,))


def test_othello_board_targets_are_the_producers_labels():
    """The heads learn exactly the board the evaluator scores (mine = the side to move)."""
    from boardlens.games.othello.engine import play_random
    from boardlens.games.othello.labels import label_games
    from boardlens.games.othello.lm_data import board_targets

    rec = play_random(8, rng=np.random.default_rng(3))
    board = board_targets(rec)
    labels = torch.from_numpy(label_games(rec, 59)["mine_theirs_empty"].reshape(8, 59, 64)).long()
    valid = board != -100
    assert valid.any() and torch.equal(board[valid], labels[valid])
    assert (~valid).equal(torch.arange(59)[None, :, None].expand(8, 59, 64)
                          >= torch.from_numpy(rec.lengths.astype(np.int64))[:, None, None])


def _train(tmp_path, name, heads, steps=150, resume=False):
    cfg = LMTrainConfig(game="tictactoe", run_dir=str(tmp_path / name), n_layer=3, n_embd=64, n_head=2, sae_layer=2,
                        steps=steps, batch_games=64, warmup_steps=5, lr=3e-3, eval_every=steps, eval_games=50,
                        probe_games=0, snapshots=False, board_heads=heads, seed=1, threads=1)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        train(cfg, resume=resume)
    return tmp_path / name


@pytest.mark.timeout(200)
def test_a_head_makes_a_tiny_model_read_the_board_and_leaves_no_trace_in_it(tmp_path, toy_game):
    plain = _train(tmp_path, "plain", ())
    headed = _train(tmp_path, "head", ("1:weight=3,anneal=0",))
    acc = {}
    for name, run in (("plain", plain), ("head", headed)):
        model, _ = load_model(run / "model")
        acc[name] = probe_board(model, toy_game, 1, 200, 200, seed=5, steps=150).accuracy  # fresh probe, fresh games
    assert acc["head"] > acc["plain"] + 0.08 and acc["head"] > 0.95, acc  # measured: 1.000 against 0.823
    with safe_open(str(headed / "model" / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(safe_open(str(plain / "model" / "model.safetensors"), "pt").keys())
    card = json.loads((headed / "model" / "config.json").read_text())
    assert card["board_heads"] == [{"layer": 1, "weight": 3.0, "anneal": 0.0}]
    assert "board_heads" not in json.loads((plain / "model" / "config.json").read_text())
    log = [json.loads(line) for line in (headed / "lm_metrics.jsonl").read_text().splitlines()]
    assert log[-1]["board_heads"][0]["loss"] < log[0]["board_heads"][0]["loss"] / 3
    # --resume continues with the heads' own state; heads asked of a state without them are refused
    state = torch.load(headed / "train_state.pt", weights_only=True)
    _train(tmp_path, "head", ("1:weight=3,anneal=0",), steps=160, resume=True)
    after = torch.load(headed / "train_state.pt", weights_only=True)
    assert after["step"] == 160 and not torch.equal(after["board_heads"]["heads.0.weight"],
                                                    state["board_heads"]["heads.0.weight"])
    with pytest.raises(CheckpointError, match="no board heads"):
        _train(tmp_path, "plain", ("1",), steps=160, resume=True)


def test_chess_board_targets_are_the_producers_piece_labels_at_every_dot():
    from boardlens.games.chess.lm_data import labelled_transcripts, training_batch_with_board
    from boardlens.games.chess.tokenizer import GAME_CHARS
    from boardlens.games.chess.transcripts import random_game

    x, _, board = training_batch_with_board(np.random.default_rng(0), 6)
    rng = np.random.default_rng(0)
    texts = [random_game(rng, GAME_CHARS + 1)[:GAME_CHARS] for _ in range(6)]
    lg = labelled_transcripts(texts)
    for g in range(6):
        dots = [int(p) for p in lg.label_pos[g] if p >= 0]
        assert dots and set(dots) <= set((board[g, :, 0] != -100).nonzero().flatten().tolist())
        for slot, p in enumerate(dots):
            assert board[g, p].tolist() == lg.labels["piece"][g, slot].reshape(64).tolist()

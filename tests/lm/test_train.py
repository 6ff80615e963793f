"""`boardlens lm train` / `lm eval`: a tiny model learns, checkpoints, resumes and exports."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from boardlens.games.othello import lm_data, tokenizer
from boardlens.games.othello.engine import bits_to_bool, play_random
from boardlens.lm.checkpoint import load_model
from boardlens.lm.train import LMTrainConfig, lm_loss, lr_at

TINY = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--sae-layer", "0", "--batch-games", "16",
        "--warmup-steps", "5", "--lr", "3e-3", "--eval-games", "32", "--threads", "1",
        "--probe-games", "20"]


def _cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "boardlens.services.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("game", ["othello", "chess"])
def test_tiny_lm_learns_checkpoints_resumes_and_exports(tmp_path, game):
    out = tmp_path / "lm"
    first = _cli("lm", "train", "--game", game, "--run-dir", str(out), "--steps", "60", *TINY,
                 "--eval-every", "30", "--checkpoint-every", "30")
    assert first.returncode == 0, first.stderr
    assert "lm-train config {" in first.stdout
    losses = [json.loads(line)["loss"] for line in open(out / "lm_metrics.jsonl")]
    assert len(losses) == 60 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1  # it learns (noise is ~0.01)
    model, cfg = load_model(out / "model")
    assert cfg["game"] == game and cfg["train_steps"] in (30, 60) and cfg["sae_layer"] == 0
    assert cfg["objective"] == ("legal" if game == "othello" else "next")  # 'auto'
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["step-0000030", "step-0000060"]
    evals = [r for r in map(json.loads, open(out / "lm_metrics.jsonl")) if "probe_reconstruction" in r]
    assert [r["step"] for r in evals] == [30, 60]  # the world-model curve, one layer here
    assert set(evals[-1]["probe_reconstruction"]) == {"0"} and 0 <= evals[-1]["probe_reconstruction"]["0"] <= 1
    # --resume continues from the saved step to a longer schedule (old flag names still work).
    again = _cli("lm", "train", "--game", game, "--out", str(out), "--steps", "70", *TINY,
                 "--eval-every", "100", "--ckpt-every", "100", "--resume")
    assert again.returncode == 0, again.stderr
    assert "resumed at step 60" in again.stdout
    assert json.loads(open(out / "lm_metrics.jsonl").readlines()[-1])["step"] == 70
    ev = _cli("lm", "eval", "--model", str(out / "model"), "--games", "20")
    assert ev.returncode == 0 and f"{game} legal_move" in ev.stdout, ev.stderr


def test_bad_lm_config_is_refused():
    with pytest.raises(ValueError, match="unknown game .go.; known: othello, chess"):
        LMTrainConfig(game="go")
    with pytest.raises(ValueError, match="sae_layer"):
        LMTrainConfig(n_layer=2, sae_layer=2)
    r = _cli("lm", "eval", "--model", "/nonexistent/model")
    assert r.returncode != 0 and "/nonexistent/model" in r.stderr


def test_legal_targets_are_the_distribution_the_next_move_is_drawn_from():
    rng = np.random.default_rng(5)
    x, q = lm_data.legal_target_batch(rng, 32)
    rec = play_random(32, rng=np.random.default_rng(5))  # the same games
    assert torch.equal(x, torch.from_numpy(lm_data.tokens_of(rec)[:, :59]))
    has_next = torch.from_numpy(rec.to_move[:, :59] >= 0)
    sums = q.sum(-1)
    assert torch.allclose(sums[has_next], torch.ones(int(has_next.sum()))) and (sums[~has_next] == 0).all()
    # Support = the legal squares; uniform on it; the move actually played is in it.
    legal = torch.from_numpy(bits_to_bool(rec.legal[:, :59]))[..., tokenizer.PLAYABLE]  # (B, 59, 60)
    assert torch.equal(q[..., 1:] > 0, legal) and (q[..., 0] == 0).all()
    nxt = torch.from_numpy(lm_data.tokens_of(rec)[:, 1:60])
    played = q.gather(-1, nxt[..., None])[..., 0]
    assert (played[has_next] > 0).all()
    assert torch.allclose(q[has_next].max(-1).values, 1 / legal[has_next].sum(-1).float())


def test_lm_loss_soft_targets_match_the_expected_hard_loss():
    # Cross-entropy against q equals the mean hard cross-entropy over next moves drawn from q.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)
    q = torch.zeros(2, 3, 5)
    q[..., 1:3] = 0.5
    q[1, 2] = 0  # no next move: skipped
    soft = lm_loss(logits, q)
    y1, y2 = torch.full((2, 3), 1), torch.full((2, 3), 2)
    y1[1, 2] = y2[1, 2] = -100
    assert torch.isclose(soft, (lm_loss(logits, y1) + lm_loss(logits, y2)) / 2)


def test_wsd_schedule_is_flat_then_decays_only_at_the_end():
    cfg = LMTrainConfig(schedule="wsd", steps=1000, warmup_steps=100, lr=1e-3, decay_frac=0.2, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(1e-5) and lr_at(cfg, 99) == pytest.approx(1e-3)
    assert lr_at(cfg, 500) == lr_at(cfg, 800) == pytest.approx(1e-3)
    assert lr_at(cfg, 900) == pytest.approx(0.55e-3) and lr_at(cfg, 1000) == pytest.approx(1e-4)
    longer = LMTrainConfig(schedule="wsd", steps=2000, warmup_steps=100, lr=1e-3)  # resumed longer
    assert lr_at(longer, 800) == lr_at(cfg, 800)
    with pytest.raises(ValueError, match="schedule"):
        LMTrainConfig(schedule="linear")
    with pytest.raises(ValueError, match=r"one of chess.s \(.next.,\)"):
        LMTrainConfig(game="chess", objective="legal")


def test_a_compact_state_is_small_and_resumes_with_a_fresh_optimizer(tmp_path, capsys):
    from boardlens.lm.train import compact_state, train

    cfg = LMTrainConfig(run_dir=str(tmp_path / "lm"), n_layer=1, n_embd=32, n_head=2, sae_layer=0, steps=10,
                        batch_games=8, warmup_steps=4, eval_every=100, eval_games=8, probe_games=0,
                        snapshots=False, threads=1)
    train(cfg)
    full = tmp_path / "lm" / "train_state.pt"
    compact_state(full, tmp_path / "compact.pt")
    assert (tmp_path / "compact.pt").stat().st_size < full.stat().st_size / 2
    small = torch.load(tmp_path / "compact.pt", weights_only=True)
    assert "opt" not in small and small["step"] == 10
    assert all(v.dtype == torch.float16 for v in small["model"].values())
    (tmp_path / "compact.pt").replace(full)
    capsys.readouterr()
    assert train(dataclasses.replace(cfg, steps=14), resume=True)["step"] == 14
    out = capsys.readouterr().out
    assert "resumed at step 10" in out and "compact state: fresh AdamW" in out


def test_a_run_can_start_from_a_saved_model_and_refuses_another_shape(tmp_path, capsys):
    from boardlens.lm.checkpoint import CheckpointError
    from boardlens.lm.train import train

    cfg = LMTrainConfig(run_dir=str(tmp_path / "a"), n_layer=1, n_embd=32, n_head=2, sae_layer=0, steps=10,
                        batch_games=8, warmup_steps=4, eval_every=10, eval_games=8, probe_games=0,
                        snapshots=False, threads=1)
    train(cfg)
    first, _ = load_model(tmp_path / "a" / "model")
    more = dataclasses.replace(cfg, run_dir=str(tmp_path / "b"), steps=12, seed=1, init_from=str(tmp_path / "a" / "model"))
    capsys.readouterr()
    got = train(more)
    assert (got["step"], got["games_seen"]) == (12, 96)
    assert "starting from" in capsys.readouterr().out
    second, meta = load_model(tmp_path / "b" / "model")
    assert meta["train_steps"] == 12 and meta["games_seen"] == 96
    moved = max((a - b).abs().max().item() for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True))
    assert 0 < moved < 0.01  # continued from the weights (two re-warmed steps), not re-initialised
    with pytest.raises(CheckpointError, match="cannot start"):
        train(dataclasses.replace(more, run_dir=str(tmp_path / "c"), n_embd=64))

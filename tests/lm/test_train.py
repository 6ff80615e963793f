"""`boardlens lm train` / `lm eval`: a tiny model learns, checkpoints, resumes and exports."""

import json
import subprocess
import sys

import pytest

from boardlens.lm.checkpoint import load_model
from boardlens.lm.train import LMTrainConfig

TINY = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--sae-layer", "0", "--batch-games", "16",
        "--warmup-steps", "5", "--lr", "3e-3", "--eval-games", "32", "--threads", "1"]


def _cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("game", ["othello", "chess"])
def test_tiny_lm_learns_checkpoints_resumes_and_exports(tmp_path, game):
    out = tmp_path / "lm"
    first = _cli("lm", "train", "--game", game, "--out", str(out), "--steps", "60", *TINY,
                 "--eval-every", "30", "--ckpt-every", "30")
    assert first.returncode == 0, first.stderr
    assert "lm-train config {" in first.stdout
    losses = [json.loads(line)["loss"] for line in open(out / "lm_metrics.jsonl")]
    assert len(losses) == 60 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1  # it learns (noise is ~0.01)
    model, cfg = load_model(out / "model")
    assert cfg["game"] == game and cfg["train_steps"] in (30, 60) and cfg["sae_layer"] == 0
    # --resume continues from the saved step to a longer schedule.
    again = _cli("lm", "train", "--game", game, "--out", str(out), "--steps", "70", *TINY,
                 "--eval-every", "100", "--ckpt-every", "100", "--resume")
    assert again.returncode == 0, again.stderr
    assert "resumed at step 60" in again.stdout
    assert json.loads(open(out / "lm_metrics.jsonl").readlines()[-1])["step"] == 70
    ev = _cli("lm", "eval", "--model", str(out / "model"), "--games", "20")
    assert ev.returncode == 0 and f"{game} legal_move" in ev.stdout, ev.stderr


def test_bad_lm_config_is_refused():
    with pytest.raises(ValueError, match="game must be one of"):
        LMTrainConfig(game="go")
    with pytest.raises(ValueError, match="sae_layer"):
        LMTrainConfig(n_layer=2, sae_layer=2)
    r = _cli("lm", "eval", "--model", "/nonexistent/model")
    assert r.returncode != 0 and "/nonexistent/model" in r.stderr

"""Extending BoardLens from outside the package: the toy plugin (tests/plugins/toy.py) adds a
game (tic-tac-toe), an SAE architecture and a trainer kind, each one module plus one register()
line; here they go through `lm train`, `sae options`, the whole of `up`, `describe`, `browse` and
`steer` in real processes. The game has no board editor and no drawing of its own: descriptions
still come (without faithfulness), the browser draws the Game's default grid, and `steer` says
what it lacks."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]
ENV = {**os.environ, "BOARDLENS_PLUGINS": "tests.plugins.toy"}


def _cli(*args, timeout=300, code=0):
    r = subprocess.run([sys.executable, "-m", "boardlens.services.cli", *args], capture_output=True, text=True,
                       env=ENV, timeout=timeout)
    assert r.returncode == code, r.stdout + r.stderr
    return r.stdout if code == 0 else r.stderr


def test_a_plugin_game_architecture_and_trainer_run_through_up(tmp_path):
    lm = tmp_path / "lm"
    out = _cli("lm", "train", "--game", "tictactoe", "--run-dir", str(lm), "--n-layer", "2", "--n-embd", "32",
               "--n-head", "2", "--sae-layer", "1", "--steps", "60", "--batch-games", "64", "--warmup-steps", "5",
               "--eval-every", "60", "--eval-games", "64", "--probe-games", "0", "--threads", "1")
    assert "held-out legal_move_acc" in out
    assert json.loads((lm / "model" / "config.json").read_text())["game"] == "tictactoe"
    assert "| `toy_lp` | toy_relu |" in _cli("sae", "options")
    run = tmp_path / "run"
    table = _cli("up", "--model", str(lm / "model"), "--tokens", "20000", "--saes", "toy_lp:power=1.5",
                 "--sae", "standard", "--d-sae", "32", "--batch-size", "128", "--train-games", "20",
                 "--test-games", "20", "--run-dir", str(run), "--quiet", timeout=330)
    assert "toy_lp-32-0.05" in table and "standard-32-0.05" in table
    final = json.loads((run / "final_metrics.json").read_text())
    toy = final["saes"]["toy_lp-32-0.05"]
    assert toy["step"] == 20000 // 128
    fam = toy["families"]["mine_theirs_empty"]
    assert fam["num_bsps"] == 18 and 0 <= fam["coverage"] <= 1
    meta = json.loads((run / "checkpoints" / "latest" / "toy_lp-32-0.05.json").read_text())
    assert meta["arch"] == "toy_relu" and meta["hyperparams"]["power"] == 1.5
    # Descriptions, live: the first and the last evaluation of each SAE, with the three scores
    # a game without board edits can have, and the reason faithfulness is missing.
    desc = json.loads((run / "descriptions" / "toy_lp-32-0.05.json").read_text())
    assert desc["step"] == 20000 // 128 and desc["described"] > 0
    assert "clarity" in desc["summary"]["all"] and desc["faithfulness"]["scored"] == 0
    assert "has none" in desc["faithfulness"]["unavailable"]
    evaluator_log = (run / "logs" / "evaluator.log").read_text()
    assert "describing" not in evaluator_log and "Traceback" not in evaluator_log
    sae = str(run / "checkpoints" / "latest" / "toy_lp-32-0.05.safetensors")
    out = _cli("describe", sae, "--model", str(lm / "model"), "--games", "40", "--no-references",
               "--json", str(tmp_path / "descriptions.json"))  # not into the checkout
    assert "faithfulness: not scored" in out and "toy_lp-32-0.05" in out
    page = tmp_path / "browser"
    _cli("browse", sae, "--model", str(lm / "model"), "--games", "40", "--pages", "4", "--out", str(page))
    latents = sorted((page / "latents").glob("*.html"))
    assert (page / "index.html").exists() and latents
    drawn = [p.read_text() for p in latents]
    assert any(text.count('class="cell"') >= 9 and ">mine</text>" in text for text in drawn)  # 3 x 3 grids
    err = _cli("steer", sae, "--model", str(lm / "model"), "--games", "40", code=1)
    assert err.count("\n") == 1 and "need board edits" in err and "tictactoe" in err

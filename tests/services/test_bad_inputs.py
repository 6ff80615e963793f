"""Every bad file or setting is a one-line error that names it, from a real CLI process.

Malicious pickles are built so that unpickling them would run code (os.system writing a
marker file): the marker must never appear.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from boardlens.services.config import DEFAULT_MODEL
from tests.services.helpers import evil_pickle

pytestmark = pytest.mark.timeout(120)


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "boardlens.services.cli", *args], capture_output=True, text=True,
                          timeout=100, cwd=cwd, env={**os.environ, "PYTHONPATH": os.getcwd()})


def _one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out
    for w in words:
        assert w in errors[0], (w, out)


def _model_with(tmp_path: Path, **gpt) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    cfg = json.loads((Path(DEFAULT_MODEL + "-random") / "config.json").read_text())
    cfg["gpt"].update(gpt)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_trainer_checkpoint_that_is_a_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000010"
    ckpt.mkdir(parents=True)
    evil_pickle(ckpt / "sweep.pt", marker)
    (tmp_path / "run" / "checkpoints" / "latest").symlink_to("step-00000010")
    r = _cli("train", "--run-dir", str(tmp_path / "run"), "--resume", "require", "--metrics-port", "0")
    _one_line_error(r, "step-00000010")
    assert not marker.exists()


def test_lm_resume_state_that_is_a_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    out = tmp_path / "lm"
    out.mkdir()
    evil_pickle(out / "train_state.pt", marker)
    r = _cli("lm", "train", "--game", "othello", "--run-dir", str(out), "--resume", "--steps", "1")
    _one_line_error(r, "train_state.pt")
    assert not marker.exists()


def test_truncated_safetensors_in_sae_export(tmp_path):
    from safetensors.torch import save_file

    st = tmp_path / "sae.safetensors"
    save_file({"encoder.weight": torch.zeros(8, 4)}, str(st))
    st.write_bytes(st.read_bytes()[:-20])
    (tmp_path / "sae.json").write_text(json.dumps({"arch": "relu"}))
    r = _cli("sae", "export", str(st), "--format", "saelens", "--out", str(tmp_path / "out"))
    _one_line_error(r, "sae.safetensors")


@pytest.mark.parametrize("config", ["[1, 2, 3]", "{not json", '{"format": "boardlens-gpt", "gpt": [1]}'])
def test_model_config_that_is_not_a_config(tmp_path, config):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(config)
    r = _cli("produce", "--model", str(folder), "--metrics-port", "0")
    _one_line_error(r, "config.json")


@pytest.mark.parametrize("field,value", [("n_layer", 10**6), ("n_embd", 10**7), ("vocab_size", -3),
                                         ("n_head", 0), ("block_size", 10**9)])
def test_model_sizes_are_bounded_before_anything_is_allocated(tmp_path, field, value):
    folder = _model_with(tmp_path, **{field: value})
    r = _cli("produce", "--model", str(folder), "--metrics-port", "0")
    _one_line_error(r, field)


def test_malicious_pickle_as_a_model(tmp_path):
    marker = tmp_path / "pwned"
    evil_pickle(tmp_path / "model.pt", marker)
    for cmd in (["produce", "--model"], ["evaluate", "--metrics-port", "0", "--model"]):
        r = _cli(*cmd, str(tmp_path / "model.pt"))
        _one_line_error(r, "model.pt")
    assert not marker.exists()


def test_bad_log_level_and_unwritable_run_folder(tmp_path):
    _one_line_error(_cli("--log-level", "LOUD", "train"), "LOUD")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores the mode: use a path under a file instead
            shutil.rmtree(ro)
            ro.write_text("a file")
        r = _cli("train", "--run-dir", str(ro / "run"), "--metrics-port", "0")
        _one_line_error(r, str(ro / "run"))
    finally:
        if ro.is_dir():
            ro.chmod(0o700)


def test_malicious_pickle_as_a_dictionary_learning_sae(tmp_path):
    from boardlens.sae.interop import import_sae

    marker = tmp_path / "pwned"
    (tmp_path / "dl").mkdir()
    evil_pickle(tmp_path / "dl" / "ae.pt", marker)
    (tmp_path / "dl" / "config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoder"}}))
    with pytest.raises(ValueError, match="ae.pt"):
        import_sae(tmp_path / "dl")
    assert not marker.exists()


@pytest.mark.parametrize("model, error", [
    ("models/othello-gpt-random", "othello games come from the 'random' source only, got 'lichess'"),
    ("models/chess-gpt-random", "unknown game source 'lichess'"),
])
def test_a_source_the_models_game_lacks_is_refused_at_start(model, error):
    """The game the model declares checks the source (a config alone cannot know the game)."""
    r = _cli("produce", "--model", model, "--source", "lichess", "--metrics-port", "0")
    assert r.returncode != 0 and error in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_default_run_folders_follow_boardlens_runs_and_an_unwritable_one_is_one_line(tmp_path):
    """The image's root is read-only: run folders default to $BOARDLENS_RUNS, and `up`
    without --run-dir where nothing can be written says so in one line."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "BOARDLENS_RUNS": str(blocker / "runs")}
    r = subprocess.run([sys.executable, "-m", "boardlens.services.cli", "up", "--tokens", "1000"], capture_output=True,
                       text=True, timeout=100, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in out, out
    (line,) = [x for x in out.splitlines() if x.startswith("error:")]
    assert "cannot create the run folder" in line and str(blocker / "runs") in line and "BOARDLENS_RUNS" in line
    probe = ("from boardlens.services.config import TrainerConfig, EvaluatorConfig; "
             "print(TrainerConfig().run_dir, EvaluatorConfig().run_dir)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                       env={**env, "BOARDLENS_RUNS": str(tmp_path / "r")})
    assert r.stdout.split() == [str(tmp_path / "r" / "default")] * 2, r.stderr

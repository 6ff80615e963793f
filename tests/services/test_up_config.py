"""`up`'s settings follow one rule: built-in defaults < up's own < --config file < environment <
flags given; config.yaml says where each value came from, and each child runs exactly it."""

import json
import re
import subprocess
import sys

import pytest
import yaml

from boardlens.services.up import UP_SAES, build_configs, config_yaml
from tests.services.helpers import small_model

FILE = """
trainer:
  batch_size: 512
  buffer_activations: 8192
  steps: 37
  lr: 0.0002
  saes: ["topk:k=8", "standard:penalty=0.01"]
producer:
  batch_games: 16
evaluator:
  train_games: 30
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(FILE)
    return str(path)


def _build(config_file=None, environ=None, tokens=None, **flags):
    return build_configs(config_file, "/tmp/run", tokens, 0, environ=environ or {}, **flags)


def test_a_files_trainer_settings_survive_up(config_file):
    c = _build(config_file)
    t = c["trainer"]
    assert (t.batch_size, t.buffer_activations, t.steps, t.lr, t.saes) == (
        512, 8192, 37, 0.0002, ("topk:k=8", "standard:penalty=0.01"))
    assert c["producer"].batch_games == 16 and c["evaluator"].train_games == 30
    assert {k: c["sources"]["trainer"][k] for k in ("batch_size", "buffer_activations", "steps", "lr", "saes")} == \
        dict.fromkeys(("batch_size", "buffer_activations", "steps", "lr", "saes"), "file")
    # up's own defaults still fill what the file leaves out
    assert (t.warmup_steps, t.snapshot_every) == (100, 37 // 10)  # a tenth of the run: shorter than 400 steps
    assert c["sources"]["trainer"]["warmup_steps"] == "up"


def test_flags_beat_the_environment_which_beats_the_file(config_file):
    env = {"BOARDLENS_TRAINER_BATCH_SIZE": "128", "BOARDLENS_TRAINER_LR": "0.003"}
    c = _build(config_file, env, batch_size=256, saes=("p_anneal",))
    t, src = c["trainer"], c["sources"]["trainer"]
    assert (t.batch_size, src["batch_size"]) == (256, "flag")
    assert (t.lr, src["lr"]) == (0.003, "environment")
    assert (t.steps, src["steps"]) == (37, "file")
    assert (t.saes, src["saes"]) == (("p_anneal",), "flag")


def test_values_up_derives_follow_the_resolved_batch_size_and_tokens(tmp_path):
    c = _build(tokens=100_000)
    t = c["trainer"]
    assert (t.batch_size, t.steps, t.buffer_activations, t.saes) == (256, 100_000 // 256, 30_000, UP_SAES)
    assert c["sources"]["trainer"]["steps"] == "up" and c["sources"]["producer"]["max_tokens"] == "flag"
    f = tmp_path / "b.yaml"
    f.write_text("trainer:\n  batch_size: 512\nproducer:\n  max_tokens: 50000\n")
    c = _build(str(f), producers=2)  # the file's per-producer share, two producers: 100k tokens in all
    assert (c["producer"].max_tokens, c["trainer"].steps, c["trainer"].buffer_activations) == (50_000, 195, 30_000)
    c = _build(str(f), tokens=20_000)  # --tokens is a flag: it beats the file's max_tokens
    assert (c["producer"].max_tokens, c["trainer"].steps) == (20_000, 39)


def test_wiring_is_ups_and_config_yaml_reads_back_as_resolved(config_file):
    c = _build(config_file, {"BOARDLENS_PRODUCER_SEED": "7"})
    assert c["sources"]["producer"]["bind"] == "wiring" and c["sources"]["trainer"]["connect"] == "wiring"
    text = config_yaml(c)
    assert re.search(r"^  batch_size: 512  # file$", text, re.M)
    assert re.search(r"^  seed: 7  # environment$", text, re.M)
    back = yaml.safe_load(text)
    for service in ("producer", "trainer", "evaluator"):
        for k, v in back[service].items():
            want = getattr(c[service], k)
            assert (list(want) if isinstance(want, tuple) else want) == v, (service, k)


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_what_up_writes_is_what_each_child_ran(tmp_path, config_file):
    """Environment and file values that `up` resolved reach the children once, as config.yaml
    says (before: the children read the environment again, over config.yaml's values)."""
    model = small_model(tmp_path / "m")
    env = {**__import__("os").environ, "BOARDLENS_TRAINER_BATCH_SIZE": "128", "BOARDLENS_TRAINER_STEPS": "11",
           "BOARDLENS_EVALUATOR_TEST_GAMES": "20", "BOARDLENS_TRAINER_LR": "0.5"}  # --lr beats this one
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "boardlens.services.cli", "up", "--config", config_file, "--model", model,
         "--tokens", "8000", "--d-sae", "32", "--lr", "0.0003", "--run-dir", str(run), "--quiet"],
        capture_output=True, text=True, timeout=220, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "environment: trainer.batch_size=128, trainer.steps=11" in out.stdout
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["trainer"]["batch_size"] == 128 and written["trainer"]["steps"] == 11
    assert written["trainer"]["buffer_activations"] == 8192 and written["trainer"]["lr"] == 0.0003
    for service in ("producer", "trainer", "evaluator"):
        log = (run / "logs" / f"{service}.log").read_text()
        ran = json.loads(re.search(rf"{service} config (\{{.*\}})$", log, re.M).group(1))
        assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in ran.items()} == written[service], service
    trained = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines() if line.strip()]
    assert max(r["step"] for r in trained if "step" in r) == 11

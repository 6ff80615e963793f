"""`boardlens up`: the main job as a user runs it, ending with the table and the run folder."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from boardlens.services.common import EXIT_INCOMPLETE
from boardlens.services.status import EvaluatorStatus, ProducerStatus, TrainerStatus, read_status
from tests.services.helpers import model_dims

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_up_runs_to_the_final_table(tmp_path):
    # A model folder with its random-init control beside it (the shipped control is tiny: a
    # config; it stands in for both) and a floor built by the real pipeline on the control.
    model = tmp_path / "m"
    shutil.copytree("models/othello-gpt-random", model)
    shutil.copytree("models/othello-gpt-random", tmp_path / "m-random")
    floor = subprocess.run(
        [sys.executable, "-m", "boardlens.services.cli", "sae", "floor", "--model", str(model), "--tokens", "30000",
         "--d-sae", "128", "--saes", "standard", "--run-dir", str(tmp_path / "floor-run")],
        capture_output=True, text=True, timeout=200)
    assert floor.returncode == 0, floor.stdout + floor.stderr
    meta = json.loads((model / "floor" / "standard-128-0.05.json").read_text())
    assert meta["control_model"] == "../m-random" and meta["layer"] == model_dims(model)[1] and meta["tokens"] == 30000
    # The floor is training only (`up --no-evaluate`): no evaluator ran or was waited for.
    floor_run = tmp_path / "floor-run"
    assert set(yaml.safe_load((floor_run / "config.yaml").read_text())) == {"producer", "trainer"}
    assert not (floor_run / "logs" / "evaluator.log").exists() and not (floor_run / "final_metrics.json").exists()
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "boardlens.services.cli", "up", "--model", str(model),
         "--tokens", "60000", "--d-sae", "128", "--batch-size", "256", "--train-games", "20",
         "--test-games", "20", "--run-dir", str(run), "--quiet"],
        capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout + out.stderr
    table = out.stdout
    assert "standard-128-0.05" in table and "p_anneal-128-0.05" in table
    assert "average cov" in table
    # The references stand beside the SAEs: rows of the summary, columns of the family table.
    for ref in ("[linear_probe]", "[mlp_neurons]", "[random_sae-128]", "[random_init_sae]"):
        assert any(line.startswith(ref) for line in table.splitlines()), ref
    assert any(line.startswith("cov / rec") and "[linear_probe]" in line for line in table.splitlines())
    assert any(line.startswith("mine_theirs_empty ") for line in table.splitlines())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["producer"]["max_tokens"] == 60000 and cfg["trainer"]["steps"] == 60000 // 256
    final = json.loads((run / "final_metrics.json").read_text())
    # The last evaluation is of the final snapshot: the trainer's last step.
    assert {r["step"] for r in final["saes"].values()} == {60000 // 256}
    loss = final["saes"]["standard-128-0.05"]["loss"]  # up passes the producer's model: loss recovered
    assert set(loss) == {"ce_clean", "ce_sae", "ce_zero", "recovered", "kl"} and loss["kl"] >= 0
    assert "loss rec" in table
    assert set(final["references"]) == {"linear_probe", "mlp_neurons", "random_sae-128", "random_init_sae"}
    assert final["references"]["random_init_sae"]["detail"].startswith("standard-128-0.05 trained on ../m-random")
    probe = final["references"]["linear_probe"]["families"]["mine_theirs_empty"]
    assert 0 <= probe["reconstruction"] <= 1 and probe["num_bsps"] == 128
    lines = (run / "train.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 60000 // 256
    assert (run / "checkpoints" / "latest" / "p_anneal-128-0.05.json").exists()
    for name in ("producer", "trainer", "evaluator"):
        log = (run / "logs" / f"{name}.log").read_text()
        assert f"{name} config {{" in log, f"{name} did not log its resolved config"
    # The channel up reads (never /metrics): each service's last status record, written at exit.
    p, t, e = (read_status(run, cls) for cls in (ProducerStatus, TrainerStatus, EvaluatorStatus))
    assert p.state == t.state == e.state == "stopped"
    assert p.tokens >= 60000 and p.seq == p.batches > 0
    assert t.step == 60000 // 256 and set(t.saes) == set(final["saes"]) and 0 < t.tokens <= p.tokens
    assert e.evaluations >= 2 and e.games == {"train": 20, "test": 20}
    assert {n: s.step for n, s in e.saes.items()} == {n: r["step"] for n, r in final["saes"].items()}
    assert set(e.references) == set(final["references"])


def test_up_scales_out_over_two_producers_and_two_trainer_shards(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "boardlens.services.cli", "up", "--model", "models/othello-gpt-random",
         "--producers", "2", "--shards", "2", "--tokens", "30000", "--d-sae", "64", "--batch-size", "256",
         "--saes", "standard:penalty=0.05,normalize=true", "--saes", "p_anneal:penalty=0.05,normalize=true",
         "--train-games", "16", "--test-games", "16", "--run-dir", str(run), "--quiet"],
        capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "standard-64-0.05" in out.stdout and "p_anneal-64-0.05" in out.stdout  # one table, both shards
    produced = {f"p{i}": read_status(run / f"producer-{i}", ProducerStatus) for i in range(2)}
    assert all(p.state == "stopped" and p.tokens >= 15000 for p in produced.values())
    saes = set()
    for i in range(2):  # each shard trained every batch of both producers, and half the sweep
        t = read_status(run / f"shard-{i}-of-2", TrainerStatus)
        assert {s: (c.batches, c.rows) for s, c in t.streams.items()} == {
            s: (p.batches, p.tokens) for s, p in produced.items()}
        assert t.tokens == sum(p.tokens for p in produced.values()) and len(t.saes) == 1
        saes |= set(t.saes)
    final = json.loads((run / "final_metrics.json").read_text())
    assert set(final["saes"]) == saes == {"standard-64-0.05", "p_anneal-64-0.05"}
    assert sorted(p.name for p in (run / "logs").iterdir()) == [
        "evaluator.log", "producer-0.log", "producer-1.log", "trainer-0.log", "trainer-1.log"]


def test_up_game_chess_runs_on_the_bundled_chess_model(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "boardlens.services.cli", "up", "--game", "chess", "--tokens", "40000",
         "--d-sae", "128", "--batch-size", "256", "--train-games", "20", "--test-games", "20",
         "--run-dir", str(run), "--quiet"],
        capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout + out.stderr
    table = out.stdout
    assert "strategy_average cov" in table and "average rec" in table
    rows = {line.split()[0] for line in table.splitlines() if line.strip()}
    assert {"piece", "threat", "legal_moves", "any_fork", "ambiguous_moves"} <= rows
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["producer"]["model"].endswith("models/chess-gpt")
    assert "(chess), layer 5" in (run / "logs" / "producer.log").read_text()
    final = json.loads((run / "final_metrics.json").read_text())
    assert all(len(r["families"]) == 15 for r in final["saes"].values())
    assert all(len(r["families"]) == 15 for r in final["references"].values())


def test_evaluator_with_an_unusable_model_fails_at_start_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "boardlens.services.cli", "evaluate", "--model", str(tmp_path / "missing"),
         "--run-dir", str(tmp_path / "run"), "--metrics-port", "0"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "Error: evaluator --model:" in out.stderr and "missing" in out.stderr
    assert "Traceback" not in out.stderr


def test_up_outlives_a_killed_trainer_shard_and_names_it(tmp_path):
    run = tmp_path / "run"
    config = tmp_path / "liveness.yaml"  # seconds, not up's minutes: the evaluator stops waiting for the dead shard
    config.write_text("trainer: {idle_heartbeat_s: 1}\nevaluator: {idle_heartbeat_s: 1, sender_timeout_s: 6}\n")
    up = subprocess.Popen(
        [sys.executable, "-m", "boardlens.services.cli", "up", "--config", str(config), "--model",
         "models/othello-gpt-random", "--shards", "2", "--tokens", "60000", "--d-sae", "64", "--batch-size", "256",
         "--saes", "standard:penalty=0.05,normalize=true", "--saes", "p_anneal:penalty=0.05,normalize=true",
         "--train-games", "16", "--test-games", "16", "--run-dir", str(run), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while (t := read_status(run / "shard-1-of-2", TrainerStatus)) is None or t.step < 3:
            assert up.poll() is None and time.monotonic() < deadline, "shard 1 never trained"
            time.sleep(0.5)
        os.kill(t.pid, signal.SIGKILL)
        out, err = up.communicate(timeout=240)
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
    assert up.returncode == EXIT_INCOMPLETE, out + err
    assert "warning: trainer-1 was killed by signal 9 (SIGKILL); the other shards go on" in err
    survivor = read_status(run / "shard-0-of-2", TrainerStatus)
    assert survivor.state == "stopped" and survivor.step == 60000 // 256  # shard 0 trained to the end
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["saes"]["standard-64-0.05"]["step"] == 60000 // 256
    lost = read_status(run / "shard-1-of-2", TrainerStatus)
    assert final["saes"].get("p_anneal-64-0.05", {"step": 0})["step"] <= lost.step < 60000 // 256
    assert "standard-64-0.05" in out  # the table, then the missing shard by name, signal and SAEs
    assert f"missing: trainer-1 (shard-1-of-2) was killed by signal 9 (SIGKILL): p_anneal-64-0.05 stopped at step {lost.step}" in out
    e = read_status(run, EvaluatorStatus)
    assert len(e.gone) == 1 and "incomplete: trainer shard(s)" in (run / "logs" / "evaluator.log").read_text()

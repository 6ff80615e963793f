"""Scale-out on loopback: 2 producers, a sweep split over 2 trainer shards, one evaluator.

Real processes and sockets, both cores saturated by other work. Every batch of both producers
must be trained by both shards, nothing lost and nothing counted twice, and the sweep must
read back as one run.
"""

from __future__ import annotations

import json
import time

import pytest

from boardlens.sae.interop import find_saes
from boardlens.services.status import ProducerStatus, TrainerStatus, read_status
from tests.services.helpers import free_ports, saturated_cores, services, small_model, start

pytestmark = pytest.mark.timeout(420)

SWEEP = ("standard:penalty=0.01|0.02", "topk:k=4|8")  # 4 SAEs: shard 0 trains #0 and #2, shard 1 #1 and #3
BATCH = 512


def test_two_producers_two_trainer_shards_every_batch_trained_by_both(tmp_path):
    ports = free_ports(6)
    data = [f"tcp://127.0.0.1:{p}" for p in ports[:2]]
    lossy = [f"tcp://127.0.0.1:{p}" for p in ports[2:4]]
    snaps = [f"tcp://127.0.0.1:{p}" for p in ports[4:]]
    model = small_model(tmp_path / "small-model")
    run = tmp_path / "run"
    logs = {}

    def log(name):
        logs[name] = tmp_path / f"{name}.log"
        return logs[name]

    procs = {}
    with saturated_cores(), services(procs, logs):
        for i in range(2):  # each producer its own games (seed) and name; both wait for both shards
            procs[f"producer{i}"] = start(
                "produce", "--model", model, "--seed", str(i + 1), "--name", f"p{i}", "--bind", data[i],
                "--bind-lossy", lossy[i], "--batch-games", "64", "--max-tokens", "30000",
                "--wait-consumers", "2", "--wait-lossy-consumers", "1", "--threads", "1",
                "--status-dir", str(tmp_path / f"p{i}"), "--metrics-port", "0", log_path=log(f"producer{i}"))
        for i in range(2):
            procs[f"trainer{i}"] = start(
                "train", "--connect", ",".join(data), "--shard", f"{i}/2", "--run-dir", str(run),
                *[a for s in SWEEP for a in ("--saes", s)], "--d-sae", "64", "--batch-size", str(BATCH),
                "--buffer-activations", str(4 * BATCH), "--steps", "100000", "--snapshot-every", "10",
                "--snapshot-bind", snaps[i], "--threads", "1", "--metrics-port", "0", log_path=log(f"trainer{i}"))
        procs["evaluator"] = start(
            "evaluate", "--connect", ",".join(lossy), "--snapshots", ",".join(snaps), "--run-dir", str(run),
            "--train-games", "32", "--test-games", "32", "--references", "false", "--describe-every", "0",
            "--threads", "1", "--metrics-port", "0", log_path=log("evaluator"))
        deadline = time.monotonic() + 360
        while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
            failed = [n for n, p in procs.items() if p.poll() not in (None, 0)]
            assert not failed, f"{failed[0]} exited {procs[failed[0]].returncode}:\n{logs[failed[0]].read_text()[-2000:]}"
            time.sleep(0.5)
        for name, p in procs.items():
            assert p.poll() == 0, f"{name}: {p.returncode}:\n{logs[name].read_text()[-2000:]}"

    produced = {f"p{i}": read_status(tmp_path / f"p{i}", ProducerStatus) for i in range(2)}
    assert all(p.tokens >= 30_000 for p in produced.values())
    names = []
    for i in range(2):
        shard = run / f"shard-{i}-of-2"
        t = read_status(shard, TrainerStatus)
        assert set(t.streams) == {"p0", "p1"}
        for src, c in t.streams.items():  # every batch of the producer's epoch, each once
            assert (c.batches, c.first_seq, c.last_seq) == (produced[src].batches, 0, produced[src].batches - 1)
            assert c.rows == produced[src].tokens
        assert t.tokens == sum(p.tokens for p in produced.values())
        assert 0 <= t.tokens - t.step * BATCH < BATCH  # all of it trained, but the last partial batch
        assert "lost" not in logs[f"trainer{i}"].read_text() and "rejected" not in logs[f"trainer{i}"].read_text()
        names.append({json.loads(p.read_text())["name"] for p in (shard / "checkpoints" / "latest").glob("*.json")})
        print(f"shard {i}: step {t.step}, {t.tokens} rows, streams "
              + ", ".join(f"{s}: {c.batches} batches / {c.rows} rows" for s, c in sorted(t.streams.items())))
    assert len(names[0]) == len(names[1]) == 2 and not names[0] & names[1]  # the sweep split, no SAE twice
    for i in range(2):
        assert "end of stream confirmed by" in logs[f"producer{i}"].read_text()
    # One sweep: the evaluator scored all four, and `score`/`report` find all four in the run folder.
    final = json.loads((run / "final_metrics.json").read_text())
    assert set(final["saes"]) == names[0] | names[1]
    assert {s.name for s in find_saes(run)} == names[0] | names[1]

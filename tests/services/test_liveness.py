"""A producer that dies never hangs a stream: real processes on loopback, both cores saturated.

Two producers feed one trainer; one is SIGKILLed mid-stream. The other waits (heartbeating)
for a second consumer longer than the trainer's sender timeout, so an idle producer must not be
taken for a dead one; then it streams to its end. The trainer must declare the dead one gone
(counted, in its status record), train every row it received and exit EXIT_INCOMPLETE.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from boardlens.services.activations import ActivationStream
from boardlens.services.common import EXIT_INCOMPLETE
from boardlens.services.status import ProducerStatus, TrainerStatus, read_status
from tests.services.helpers import (
    free_ports,
    saturated_cores,
    scrape,
    services,
    small_model,
    start,
    value,
    wait_for,
)

pytestmark = pytest.mark.timeout(300)

BATCH = 256
TIMEOUT_S = 6  # the trainer's sender_timeout_s; producers beat every second


def test_a_killed_producer_is_declared_gone_and_the_trainer_ends_incomplete(tmp_path):
    p0_port, p1_port, tm = free_ports(3)
    model = small_model(tmp_path / "model")
    run = tmp_path / "run"
    logs = {n: tmp_path / f"{n}.log" for n in ("p0", "p1", "trainer")}
    common = ["--model", model, "--batch-games", "16", "--threads", "1", "--metrics-port", "0",
              "--bind-lossy", "tcp://127.0.0.1:0", "--idle-heartbeat-s", "1"]
    procs = {
        # p1 streams at once and for ever (until killed); p0 waits for a second consumer first.
        "p1": start("produce", *common, "--name", "p1", "--seed", "2", "--bind", f"tcp://127.0.0.1:{p1_port}",
                    "--wait-consumers", "1", "--status-dir", str(tmp_path / "p1"), log_path=logs["p1"]),
        "p0": start("produce", *common, "--name", "p0", "--seed", "1", "--bind", f"tcp://127.0.0.1:{p0_port}",
                    "--wait-consumers", "2", "--max-tokens", "20000", "--status-dir", str(tmp_path / "p0"),
                    log_path=logs["p0"]),
    }
    shard = run
    with saturated_cores(), services(procs, logs):
        procs["trainer"] = start(
            "train", "--connect", f"tcp://127.0.0.1:{p0_port},tcp://127.0.0.1:{p1_port}", "--run-dir", str(run),
            "--saes", "standard:penalty=0.01", "--d-sae", "64", "--batch-size", str(BATCH),
            "--buffer-activations", str(4 * BATCH), "--steps", "1000000", "--snapshot-bind", "tcp://127.0.0.1:0",
            "--sender-timeout-s", str(TIMEOUT_S), "--idle-heartbeat-s", "1", "--threads", "1",
            "--metrics-port", str(tm), log_path=logs["trainer"])
        wait_for(lambda: (t := read_status(shard, TrainerStatus)) and t.streams.get("p1", None) and
                 t.streams["p1"].batches >= 3, 120, "the trainer to take batches from p1", procs)
        procs["p1"].send_signal(signal.SIGKILL)
        procs["p1"].wait(10)
        killed_at = time.monotonic()
        wait_for(lambda: (t := read_status(shard, TrainerStatus)) and t.gone == ["p1"], 60, "p1 declared gone",
                 {n: p for n, p in procs.items() if n != "p1"})
        declared_after = time.monotonic() - killed_at
        assert declared_after >= TIMEOUT_S - 1  # not before its timeout
        samples = scrape(tm)
        assert value(samples, "boardlens_trainer_producers_lost_total", source="p1") == 1
        assert value(samples, "boardlens_trainer_producers_lost_total", source="p0") == 0  # idle, alive
        assert procs["trainer"].poll() is None  # p0 has not ended: the stream goes on
        # A second consumer for p0 (our iterator API): p0 streams to its end, the trainer follows.
        rows = []
        watcher = ActivationStream(f"tcp://127.0.0.1:{p0_port}", batch_size=BATCH)
        reader = threading.Thread(target=lambda: rows.extend(x.shape[0] for x in watcher), daemon=True)
        reader.start()
        assert procs["trainer"].wait(120) == EXIT_INCOMPLETE, logs["trainer"].read_text()[-3000:]
        assert procs["p0"].wait(60) == 0
        reader.join(30)
        watcher.close()

    p0 = read_status(tmp_path / "p0", ProducerStatus)
    t = read_status(shard, TrainerStatus)
    assert t.gone == ["p1"] and set(t.streams) == {"p0", "p1"}
    assert (t.streams["p0"].batches, t.streams["p0"].rows) == (p0.batches, p0.tokens)  # all of p0
    assert t.tokens == p0.tokens + t.streams["p1"].rows  # and every row p1 got out
    assert 0 <= t.tokens - t.step * BATCH < BATCH  # all of it trained but the last partial batch
    assert sum(rows) // BATCH * BATCH == sum(rows) and sum(rows) > p0.tokens - BATCH  # the watcher too
    print(f"p1 declared gone {declared_after:.1f} s after its SIGKILL (timeout {TIMEOUT_S} s); trained "
          f"{t.tokens} rows at step {t.step}: p0 {p0.batches} batches / {p0.tokens} rows (all), p1 "
          f"{t.streams['p1'].batches} batches / {t.streams['p1'].rows} rows before it died")
    log = logs["trainer"].read_text()
    assert "sender p1 declared gone" in log and "stream incomplete: producer(s) p1 gone" in log
    assert "p0 declared gone" not in log

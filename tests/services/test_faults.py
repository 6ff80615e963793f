"""Faults with real processes on loopback: kills, stops, restarts. Bounded in time and count."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from protocol import SeqTracker, Subscriber, TransportConfig, decode, decode_batch
from services.config import DEFAULT_MODEL
from services.up import spawn, stop_processes
from tests.services.helpers import free_ports, scrape, services, start, value, wait_for

pytestmark = pytest.mark.timeout(240)

RANDOM_MODEL = DEFAULT_MODEL + "-random"  # same shapes as the bundled model, untrained


def _producer(port: int, metrics: int, state: str, log, max_tokens: int, extra=()):
    return spawn("produce", ["--model", RANDOM_MODEL, "--bind", f"tcp://127.0.0.1:{port}",
                             "--bind-lossy", "tcp://127.0.0.1:0", "--batch-games", "64",
                             "--max-tokens", str(max_tokens), "--wait-consumers", "1", "--threads", "1",
                             "--state-file", state, "--metrics-port", str(metrics), *extra], log)


def test_a_killed_producer_continues_its_stream_and_the_consumer_counts_what_it_lost(tmp_path):
    port, metrics = free_ports(2)
    state = tmp_path / "producer_state.json"
    sub = Subscriber(f"tcp://127.0.0.1:{port}", cfg=TransportConfig(rcvhwm_msgs=2), name="counter")
    tracker, ids, seqs, epochs = SeqTracker(), [], [], set()
    end = None
    procs = {}
    try:
        for run in range(3):  # two SIGKILLs, then it runs to the end
            procs["producer"] = _producer(port, metrics, str(state), tmp_path / f"producer{run}.log", 150_000)
            target = len(seqs) + 4
            while end is None and (run == 2 or len(seqs) < target):
                frames = sub.recv(60_000)
                assert frames is not None, f"run {run}: stream stopped after {len(seqs)} batches"
                msg = decode(frames)
                lost, reason = tracker.check(msg.header.epoch, msg.header.seq, msg.header.kind)
                assert reason is None, reason
                epochs.add(msg.header.epoch)
                if msg.header.kind == "end":
                    end = msg.header
                    sub.confirm_end(end.epoch, end.seq)
                    break
                seqs.append(msg.header.seq)
                ids.extend(decode_batch(msg).game_ids.tolist())
            if run < 2:
                # The producer runs ahead into its queue (3 MB batches, more than the kernel's
                # socket buffers hold): that is what a kill loses.
                time.sleep(4.0)
                procs["producer"].send_signal(signal.SIGKILL)
                procs["producer"].wait(10)
        assert procs["producer"].wait(60) == 0
    finally:
        sub.close()
        stop_processes(procs, timeout_s=10)
    saved = json.loads(state.read_text())
    assert len(epochs) == 1 and saved["restarts"] == 2  # one stream across three processes
    assert len(ids) == len(set(ids)), "a game was sent twice"
    assert tracker.lost_total > 0, "nothing was in flight at the kills (the test lost its point)"
    assert len(seqs) + tracker.lost_total == end.seq == saved["seq"]  # every batch counted
    assert max(ids) < saved["next_game_id"] and len(ids) == 64 * len(seqs)
    assert end.meta["tokens"] == saved["tokens"] >= 150_000
    assert "end of stream confirmed by counter" in (tmp_path / "producer2.log").read_text()


def test_a_state_file_of_another_stream_or_garbage_is_a_one_line_error(tmp_path):
    port, metrics = free_ports(2)
    state = tmp_path / "state.json"
    for content, words in ((b"[1, 2]", "not a JSON object"), (b"\x00\xff", "unusable"),
                           (json.dumps({"epoch": "ab", "stream": {"seed": 7}}).encode(), "another stream")):
        state.write_bytes(content)
        log = tmp_path / "producer.log"
        proc = _producer(port, metrics, str(state), log, 1000)
        assert proc.wait(60) == 1
        text = log.read_text()
        assert words in text and str(state) in text and "Traceback" not in text, text
        assert state.read_bytes() == content  # nothing lost: the file is left for the user
    assert not os.path.exists(str(state) + ".tmp")


@contextmanager
def saturated_cores(n: int = os.cpu_count() or 2):
    """n busy processes for the duration: the faults must hold on a loaded machine too."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def test_a_trainer_stopped_across_the_end_still_gets_every_batch_and_the_end(tmp_path):
    """The old failure: the producer exited once its queue reached the kernel; a trainer busy
    (here: SIGSTOPped) past that lost the tail and the end. Now the producer waits for the
    trainer's confirmation, on saturated cores."""
    port, pm, snaps, tm = free_ports(4)
    logs = {n: tmp_path / f"{n}.log" for n in ("producer", "trainer")}
    batch = 1024
    with saturated_cores():
        procs = {
            "trainer": start("train", "--connect", f"tcp://127.0.0.1:{port}", "--snapshot-bind",
                             f"tcp://127.0.0.1:{snaps}", "--run-dir", str(tmp_path / "run"), "--saes",
                             "standard", "--d-sae", "128", "--batch-size", str(batch), "--buffer-activations",
                             "8192", "--steps", "100000", "--warmup-steps", "5", "--threads", "1",
                             "--metrics-port", str(tm), log_path=logs["trainer"]),
            "producer": start("produce", "--model", RANDOM_MODEL, "--bind", f"tcp://127.0.0.1:{port}",
                              "--bind-lossy", "tcp://127.0.0.1:0", "--batch-games", "64", "--max-tokens",
                              "150000", "--wait-consumers", "1", "--threads", "1", "--drain-timeout-s", "120",
                              "--metrics-port", str(pm), log_path=logs["producer"]),
        }
        with services(procs, logs):
            wait_for(lambda: value(scrape(pm), "boardlens_producer_batches_total") >= 1, 120,
                     "the producer to stream", procs)
            procs["trainer"].send_signal(signal.SIGSTOP)  # the whole stream now fits in the queues
            try:
                wait_for(lambda: "sending end of stream" in logs["producer"].read_text(), 120,
                         "the producer to reach its end", procs)
                time.sleep(5)  # the old producer would have exited by now
                assert procs["producer"].poll() is None, "the producer left before the trainer confirmed"
            finally:
                procs["trainer"].send_signal(signal.SIGCONT)
            assert procs["producer"].wait(120) == 0
            assert procs["trainer"].wait(120) == 0
    produced = logs["producer"].read_text()
    tokens = int(re.search(r"reached max_tokens \((\d+) tokens streamed\)", produced).group(1))
    assert "end of stream confirmed by" in produced
    trained = logs["trainer"].read_text()
    step = int(re.search(r"trainer: stopped at step (\d+)", trained).group(1))
    assert step == tokens // batch, (step, tokens)  # every row of every batch was trained on
    assert "lost" not in trained and "rejected" not in trained

"""Faults with real processes on loopback: kills, stops, restarts. Bounded in time and count."""

import dataclasses
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter

import msgpack
import pytest
import torch

from boardlens.protocol import (
    ProtocolError,
    Publisher,
    SeqTracker,
    Subscriber,
    TransportConfig,
    decode,
    decode_batch,
    encode,
    encode_batch,
)
from boardlens.services.up import spawn, stop_processes
from tests.services.helpers import (
    RANDOM_MODEL,
    free_ports,
    healthz,
    saturated_cores,
    scrape,
    services,
    small_model,
    start,
    synthetic_batch,
    value,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)



def _producer(port: int, metrics: int, state: str, log, max_tokens: int, extra=(), model: str = RANDOM_MODEL):
    return spawn("produce", ["--model", model, "--bind", f"tcp://127.0.0.1:{port}",
                             "--bind-lossy", "tcp://127.0.0.1:0", "--batch-games", "64",
                             "--max-tokens", str(max_tokens), "--wait-consumers", "1", "--threads", "1",
                             "--state-file", state, "--metrics-port", str(metrics), *extra], log)


def test_a_killed_producer_continues_its_stream_and_the_consumer_counts_what_it_lost(tmp_path):
    port, metrics = free_ports(2)
    state = tmp_path / "producer_state.json"
    sub = Subscriber(f"tcp://127.0.0.1:{port}", cfg=TransportConfig(rcvhwm_msgs=2), name="counter")
    tracker, ids, seqs, epochs = SeqTracker(), [], [], set()
    small = small_model(tmp_path / "small-model")
    end = None
    procs = {}
    try:
        for run in range(3):  # two SIGKILLs, then it runs to the end
            log = tmp_path / f"producer{run}.log"
            procs["producer"] = _producer(port, metrics, str(state), log, 1_000_000, model=small)
            # Its state is saved once it has started: only then does a kill test a restart.
            wait_for(lambda log=log: "producer: model" in log.read_text(), 120, f"producer run {run} to start",
                     procs)
            target = len(seqs) + 4
            while end is None and (run == 2 or len(seqs) < target):
                frames = sub.recv(60_000)
                assert frames is not None, f"run {run}: stream stopped after {len(seqs)} batches"
                msg = decode(frames)
                lost, reason = tracker.check(msg.header.epoch, msg.header.seq, msg.header.kind)
                assert reason is None, reason
                epochs.add(msg.header.epoch)
                if msg.header.kind == "heartbeat":  # the restarted producer waiting for us
                    continue
                if msg.header.kind == "end":
                    end = msg.header
                    sub.confirm_end(end.epoch, end.seq)
                    break
                seqs.append(msg.header.seq)
                ids.extend(decode_batch(msg).game_ids.tolist())
            if run < 2:
                # The producer runs ahead into its send queue (more than the kernel's socket
                # buffers and the counter's 2-message queue hold): that is what a kill loses.
                # The small model makes batches fast enough for that on any machine.
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
    assert end.meta["tokens"] == saved["tokens"] >= 1_000_000
    assert "end of stream confirmed by counter" in (tmp_path / "producer2.log").read_text()
    print(f"2 kills: {len(seqs)} batches received, {tracker.lost_total} counted lost, final seq {end.seq}, "
          f"{len(ids)} game ids, all distinct")


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


def _malformed(good: list, rng: random.Random) -> list:
    """A message decode() refuses (checked by the caller): mutations of a valid one."""
    header, frames = bytes(memoryview(good[0])), [bytes(memoryview(f)) for f in good[1:]]
    kind = rng.randrange(7)
    if kind == 0:
        return [rng.randbytes(rng.randrange(1, 200))]
    if kind == 1:  # flipped header bytes
        h = bytearray(header)
        for _ in range(rng.randrange(1, 4)):
            h[rng.randrange(len(h))] = rng.randrange(256)
        return [bytes(h), *frames]
    if kind == 2:  # a truncated tensor
        i = rng.randrange(len(frames))
        return [header, *frames[:i], frames[i][:-rng.randrange(1, 5)], *frames[i + 1:]]
    if kind == 3:  # a frame too many or too few
        return [header, *frames, b"x"] if rng.random() < 0.5 else [header, *frames[:-1]]
    if kind == 4:
        return [b"\x00" * (65 * 1024)]  # oversized header
    if kind == 5:  # valid msgpack, wrong schema
        return [msgpack.packb(rng.choice([[1, 2], "batch", {"v": 1}, {"v": 2, "k": "batch"}, 7])), *frames]
    return [header[: rng.randrange(1, len(header))], *frames]  # a truncated header


class _HostileFeed:
    """Sends good batches of two producer epochs and bad messages of every kind, counting what
    the trainer must reject, by reason."""

    def __init__(self, pub: Publisher) -> None:
        self.pub, self.rng = pub, random.Random(0)
        self.expected: Counter = Counter()
        self.a, self.b = "aaaa", "bbbb"
        self.seq = {self.a: 0, self.b: 0}
        self.last_good = {self.a: -1, self.b: -1}  # the stream's last accepted seq
        self.good_sent = 0

    def good(self, epoch: str) -> None:
        self.pub.send(encode_batch(synthetic_batch(epoch, self.seq[epoch])))
        self.last_good[epoch] = self.seq[epoch]
        self.seq[epoch] += 1
        self.good_sent += 1

    def hostile(self, frames, reason: str) -> None:
        self.pub.send(frames)
        self.expected[reason] += 1

    def malformed(self) -> None:
        """200 undecodable messages (the codec's own reasons), a good batch every 7."""
        template = encode_batch(synthetic_batch(self.a, 0))
        for i in range(200):
            if i % 7 == 0:
                self.good(self.a)
            while True:
                frames = _malformed(template, self.rng)
                try:
                    decode(frames)
                except ProtocolError as e:
                    self.hostile(frames, e.reason)
                    break

    def well_formed_but_wrong(self) -> None:
        """Non-finite bodies, replays, jumps, a stale end, a new epoch, a wrong width, a flap."""
        a, b, rng, seq = self.a, self.b, self.rng, self.seq
        for poison in [float("nan")] * 5 + [float("inf")] * 5:
            acts = torch.randn(16, 59, 32)
            acts[rng.randrange(16), rng.randrange(59)] = poison
            self.hostile(encode_batch(synthetic_batch(a, seq[a], acts=acts)), "non_finite")
            seq[a] += 1  # a rejected body moves nothing, but the gap it leaves is not counted as lost
        for _ in range(10):  # replays of accepted seqs (a rejected seq may still come, valid)
            self.hostile(encode_batch(synthetic_batch(a, rng.randrange(self.last_good[a] + 1))), "out_of_order")
        for _ in range(5):
            self.hostile(encode_batch(synthetic_batch(a, seq[a] + 10**12)), "seq_jump")
            self.hostile(encode("end", epoch="dead", seq=0, game="othello", model="m", layer=0, tensors={}),
                         "end_epoch")
        for _ in range(10):  # the producer restarted without its state: a new epoch
            self.good(b)
        self.hostile(encode_batch(synthetic_batch(b, seq[b], d=16)), "incompatible")  # valid, wrong width
        seq[b] += 1
        for _ in range(5):  # ... and the old one comes back
            self.hostile(encode_batch(synthetic_batch(a, seq[a])), "epoch_flap")
            seq[a] += 1
            self.good(b)


def _live_trainer(tmp_path):
    """A publisher of our own and a live trainer (one small SAE) subscribed to it: (pub, procs,
    logs, the trainer's metrics port)."""
    data, snaps, tm = free_ports(3)
    logs = {"trainer": tmp_path / "trainer.log"}
    pub = Publisher(f"tcp://127.0.0.1:{data}", None, TransportConfig(send_timeout_ms=10_000))
    procs = {"trainer": start("train", "--connect", f"tcp://127.0.0.1:{data}", "--snapshot-bind",
                              f"tcp://127.0.0.1:{snaps}", "--run-dir", str(tmp_path / "run"), "--saes", "standard",
                              "--d-sae", "64", "--batch-size", "128", "--buffer-activations", "1024",
                              "--steps", "100000", "--warmup-steps", "1", "--threads", "1",
                              "--metrics-port", str(tm), log_path=logs["trainer"])}
    return pub, procs, logs, tm


def test_hostile_and_malformed_messages_against_a_live_trainer(tmp_path):
    """236 bad messages of 15 kinds interleaved with 44 good batches: every one rejected and counted by
    reason, nothing counted as lost, training goes on, and no NaN reaches a checkpoint."""
    pub, procs, logs, tm = _live_trainer(tmp_path)
    feed = _HostileFeed(pub)
    try:
        with services(procs, logs):
            assert pub.wait_for_subscribers(1, 60), "trainer never subscribed"
            feed.malformed()
            feed.well_formed_but_wrong()
            assert sum(feed.expected.values()) >= 200 and feed.good_sent == 44
            received = feed.good_sent + 1  # the incompatible batch was received, then refused
            wait_for(lambda: value(scrape(tm), "boardlens_trainer_messages_total") >= received, 120,
                     "the good batches", procs)
            time.sleep(1.0)
            t = scrape(tm)
            for reason, n in feed.expected.items():
                assert value(t, "boardlens_trainer_messages_rejected_total", reason=reason) == n, reason
            assert value(t, "boardlens_trainer_messages_total") == received
            assert value(t, "boardlens_trainer_batches_lost_total") == 0
            assert value(t, "boardlens_trainer_steps_total") >= 5  # it trained
            pub.send(encode("end", epoch=feed.b, seq=feed.seq[feed.b], game="othello", model="m", layer=0,
                            tensors={}))
            assert procs["trainer"].wait(60) == 0
    finally:
        pub.close(linger_ms=0)
    from boardlens.sae.checkpoint import latest_checkpoint, read_checkpoint

    _, states = read_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    (state,) = states.values()
    assert all(bool(torch.isfinite(w).all()) for w in state["ae"].values())


def test_a_forged_batch_naming_the_real_producer_with_a_new_epoch_changes_nothing(tmp_path):
    """One batch naming the real producer (src p0) with a new epoch and the wrong width is
    refused (incompatible) and changes nothing: every real batch after it is trained on. (Once,
    the trainer adopted the forged epoch before refusing the body, dropped every real batch
    after it as epoch_flap and stopped training with /healthz still 200.)"""
    pub, procs, logs, tm = _live_trainer(tmp_path)
    try:
        with services(procs, logs):
            assert pub.wait_for_subscribers(1, 60), "trainer never subscribed"
            for seq in range(10):
                pub.send(encode_batch(synthetic_batch("aaaa", seq, src="p0")))
            wait_for(lambda: value(scrape(tm), "boardlens_trainer_messages_total") >= 10, 120, "10 batches", procs)
            steps_before = value(scrape(tm), "boardlens_trainer_steps_total")
            pub.send(encode_batch(synthetic_batch("ffff", 0, d=16, src="p0")))  # the forgery
            for seq in range(10, 40):
                pub.send(encode_batch(synthetic_batch("aaaa", seq, src="p0")))
            wait_for(lambda: value(scrape(tm), "boardlens_trainer_messages_total") >= 41, 120, "every batch", procs)
            wait_for(lambda: value(scrape(tm), "boardlens_trainer_steps_total") >= steps_before + 150, 120,
                     "training on the batches after the forgery", procs)
            t = scrape(tm)
            assert value(t, "boardlens_trainer_messages_rejected_total", reason="incompatible") == 1
            assert value(t, "boardlens_trainer_messages_rejected_total", reason="epoch_flap") == 0
            assert value(t, "boardlens_trainer_batches_lost_total", source="p0") == 0
            pub.send(encode("end", epoch="aaaa", seq=40, game="othello", model="m", layer=0, tensors={},
                            meta={"src": "p0"}))
            assert procs["trainer"].wait(60) == 0
    finally:
        pub.close(linger_ms=0)


def test_curve_keeps_an_unauthenticated_client_out_of_a_live_producer(tmp_path):
    from boardlens.protocol.security import client_keys, generate

    port, pm = free_ports(2)
    keys = tmp_path / "keys"
    generate(keys)
    generate(tmp_path / "stranger")
    log = tmp_path / "producer.log"
    # Beyond loopback without keys: refused at start, in one line.
    bare = start("produce", "--model", RANDOM_MODEL, "--bind", f"tcp://0.0.0.0:{port}", "--metrics-port", "0",
                 log_path=log)
    assert bare.wait(60) == 2 and "needs curve_keys" in log.read_text() and "Traceback" not in log.read_text()
    procs = {"producer": start("produce", "--model", RANDOM_MODEL, "--bind", f"tcp://0.0.0.0:{port}",
                               "--bind-lossy", "tcp://127.0.0.1:0", "--curve-keys", str(keys), "--batch-games", "8",
                               "--max-tokens", "3000", "--wait-consumers", "1", "--threads", "1",
                               "--metrics-port", str(pm), log_path=log)}
    endpoint = f"tcp://127.0.0.1:{port}"
    plain = Subscriber(endpoint, name="plain")  # no CURVE at all: refused before any key is seen
    intruder = None
    try:
        with services(procs, {"producer": log}):
            wait_for(lambda: value(scrape(pm), "boardlens_producer_auth_denied_total") >= 1, 60,
                     "the producer to count the client without CURVE (its handshake fails)", procs)
            # Counted before the intruder comes: its one refused handshake may be counted at once.
            denied = value(scrape(pm), "boardlens_producer_auth_denied_total")
            intruder = Subscriber(endpoint, name="intruder",
                                  curve=dataclasses.replace(client_keys(str(tmp_path / "stranger")),
                                                            server_public=client_keys(str(keys)).server_public))
            wait_for(lambda: value(scrape(pm), "boardlens_producer_auth_denied_total") > denied, 60,
                     "the producer to refuse the intruder's key", procs)
            assert value(scrape(pm), "boardlens_producer_subscribers", mode="lossless") == 0
            trusted = Subscriber(endpoint, name="trusted", curve=client_keys(str(keys)))
            got = 0
            while (frames := trusted.recv(30_000)) is not None:
                msg = decode(frames)
                if msg.header.kind == "end":
                    trusted.confirm_end(msg.header.epoch, msg.header.seq)
                    break
                got += msg.header.kind == "batch"
            trusted.close()
            assert got >= 1 and procs["producer"].wait(30) == 0
        assert intruder.recv(200) is None and plain.recv(200) is None  # nothing, ever
    finally:
        if intruder is not None:
            intruder.close()
        plain.close()
    assert "end of stream confirmed by trusted" in log.read_text()


def test_a_subscriber_that_never_reads_turns_producer_healthz_unhealthy(tmp_path):
    port, pm = free_ports(2)
    log = tmp_path / "producer.log"
    rogue = Subscriber(f"tcp://127.0.0.1:{port}", cfg=TransportConfig(rcvhwm_msgs=1), name="rogue")
    reader = Subscriber(f"tcp://127.0.0.1:{port}", name="reader")  # healthy: reads all it gets
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [reader.recv(200) for _ in iter(stop.is_set, True)], daemon=True)
    thread.start()
    procs = {"producer": start("produce", "--model", RANDOM_MODEL, "--bind", f"tcp://127.0.0.1:{port}",
                               "--bind-lossy", "tcp://127.0.0.1:0", "--batch-games", "64", "--sndhwm-msgs", "2",
                               "--send-timeout-ms", "1000", "--blocked-unhealthy-s", "3", "--wait-consumers", "2",
                               "--threads", "1", "--metrics-port", str(pm), log_path=log)}
    try:
        with services(procs, {"producer": log}):
            code, info = wait_for(lambda: (h := healthz(pm))[0] == 503 and h, 120,
                                  "/healthz to report the blocked producer", procs)
            # the one that blocks is named first; the one that reads is not blamed
            assert "blocked" in info["problems"][0] and "furthest behind: rogue" in info["problems"][0], info
            assert "furthest behind: rogue" in log.read_text()  # and so does the log
            assert value(scrape(pm), "boardlens_producer_send_blocked_now_seconds") > 3
            rogue.close()  # once it is gone the producer is free again
            wait_for(lambda: healthz(pm)[0] == 200, 60, "/healthz to recover", procs)
    finally:
        stop.set()
        thread.join(5)
        rogue.close()
        reader.close()


def test_a_stopped_lossy_consumer_never_slows_the_producer(tmp_path):
    """The evaluator (lossy endpoint) SIGSTOPped for 6 s: the producer streams on at full speed, the
    evaluator resumes and counts what it missed as lost; the lossless reader misses nothing."""
    port, lossy, pm, snaps, em = free_ports(5)
    logs = {n: tmp_path / f"{n}.log" for n in ("producer", "evaluator")}
    procs = {
        "evaluator": start("evaluate", "--connect", f"tcp://127.0.0.1:{lossy}", "--snapshots",
                           f"tcp://127.0.0.1:{snaps}", "--run-dir", str(tmp_path / "run"), "--train-games", "2000",
                           "--test-games", "2000", "--references", "false", "--threads", "1",
                           "--metrics-port", str(em), log_path=logs["evaluator"]),
        "producer": start("produce", "--model", RANDOM_MODEL, "--bind", f"tcp://127.0.0.1:{port}",
                          "--bind-lossy", f"tcp://127.0.0.1:{lossy}", "--batch-games", "64",
                          "--wait-consumers", "1", "--wait-lossy-consumers", "1", "--threads", "1",
                          "--metrics-port", str(pm), log_path=logs["producer"]),
    }
    reader = Subscriber(f"tcp://127.0.0.1:{port}", name="reader")
    tracker, stop = SeqTracker(), threading.Event()

    def read():
        while not stop.is_set():
            frames = reader.recv(200)
            if frames is not None:
                tracker.observe(decode(frames).header.epoch, decode(frames).header.seq)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        with services(procs, logs):
            wait_for(lambda: value(scrape(em), "boardlens_evaluator_messages_total") >= 2, 120,
                     "the evaluator to receive", procs)
            t0 = value(scrape(pm), "boardlens_producer_batches_total")
            time.sleep(6)
            t1 = value(scrape(pm), "boardlens_producer_batches_total")
            procs["evaluator"].send_signal(signal.SIGSTOP)
            try:
                time.sleep(6)
                during = value(scrape(pm), "boardlens_producer_batches_total") - t1
                assert value(scrape(pm), "boardlens_producer_send_timeouts_total") == 0
            finally:
                procs["evaluator"].send_signal(signal.SIGCONT)
            before = t1 - t0
            # As fast as before (within the noise of a loaded machine); that the evaluator then
            # counts batches as lost shows they were dropped for it, not queued.
            assert during >= 0.5 * before > 0, (before, during)
            print(f"evaluator stopped 6 s: the producer sent {during:.0f} batches ({before:.0f} in the 6 s "
                  "before), 0 send timeouts")
            wait_for(lambda: value(scrape(em), "boardlens_evaluator_batches_lost_total") > 0, 60,
                     "the evaluator to count what it missed", procs)
            assert healthz(em)[0] == 200
    finally:
        stop.set()
        thread.join(5)
        reader.close()
    # Nothing lost on the lossless side; a few batches suffice to show it (9 arrived in the 12 s
    # of a suite run beside two other CPU-bound jobs).
    assert tracker.lost_total == 0 and tracker.received >= 5

"""services.common.receive over real sockets: loss is counted per producer (Prometheus label
`source`), so an operator of several producers sees which one is losing batches."""

from __future__ import annotations

import time

import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from boardlens.protocol import ActivationBatch, Publisher, Subscriber, encode_batch
from boardlens.protocol.transport import SOURCE_KEY
from boardlens.services import metrics as M
from boardlens.services.common import MessageCounters, receive
from boardlens.services.telemetry import Telemetry


def _batch(src: str, seq: int) -> list:
    return encode_batch(ActivationBatch(
        acts=torch.randn(2, 3, 4), tokens=torch.zeros(2, 3, dtype=torch.int64),
        game_ids=torch.arange(2), lengths=torch.full((2,), 3, dtype=torch.int16),
        label_pos=torch.zeros(2, 1, dtype=torch.int16), epoch="ab", seq=seq, meta={SOURCE_KEY: src}))


def _lost(tel: Telemetry) -> dict[str, float]:
    text = generate_latest(tel.registry).decode()
    return {s.labels["source"]: s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == M.TRAINER_DATA.lost.name}


def test_losses_are_counted_under_the_producer_that_lost_them():
    tel = Telemetry("trainer", 0)
    counters = MessageCounters(tel, M.TRAINER_DATA)
    pubs = {name: Publisher("tcp://127.0.0.1:0", None) for name in ("a", "b")}
    sub = Subscriber([p.lossless_endpoint for p in pubs.values()])
    try:
        for p in pubs.values():
            assert p.wait_for_subscribers(1, timeout_s=30)
        for seq in (0, 1, 2):
            pubs["a"].send(_batch("a", seq))
        for seq in (0, 3):  # b's seqs 1 and 2 never arrive
            pubs["b"].send(_batch("b", seq))
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 5 and time.monotonic() < deadline:
            receive(sub, counters, 1000, lambda kind, batch: got.append(batch.meta[SOURCE_KEY]))
        assert sorted(got) == ["a", "a", "a", "b", "b"]
        # a's series exists from its first message at 0, so a later loss shows in rate().
        assert _lost(tel) == {"a": 0.0, "b": 2.0}
    finally:
        sub.close()
        for p in pubs.values():
            p.close(linger_ms=0)
        tel.close()


def test_invented_sender_names_open_a_bounded_number_of_series():
    """An unauthenticated peer naming every message differently: a name gets a series only once
    a message of its is accepted, and only the first MAX_SOURCE_LABELS names; the rest count as
    'other' (1,030 invented names once opened 1,024 series)."""
    from boardlens.services.common import MAX_SOURCE_LABELS

    tel = Telemetry("trainer", 0)
    counters = MessageCounters(tel, M.TRAINER_DATA)
    pub = Publisher("tcp://127.0.0.1:0", None)
    sub = Subscriber(pub.lossless_endpoint)
    try:
        assert pub.wait_for_subscribers(1, timeout_s=30)
        for i in range(100):  # rejected for their bodies (NaN): no series, no stream
            pub.send(encode_batch(ActivationBatch(
                acts=torch.full((2, 3, 4), float("nan")), tokens=torch.zeros(2, 3, dtype=torch.int64),
                game_ids=torch.arange(2), lengths=torch.full((2,), 3, dtype=torch.int16),
                label_pos=torch.zeros(2, 1, dtype=torch.int16), epoch="ab", seq=0,
                meta={SOURCE_KEY: f"forged-{i}"})))
        for i in range(100):  # accepted, each losing 2 before its second message
            pub.send(_batch(f"invented-{i}", 0))
            pub.send(_batch(f"invented-{i}", 3))
        seen = 0
        deadline = time.monotonic() + 60
        while seen < 300 and time.monotonic() < deadline:
            seen += receive(sub, counters, 1000, lambda kind, batch: None)
        assert seen == 300
        lost = _lost(tel)
        assert len(lost) == MAX_SOURCE_LABELS + 1 and "other" in lost
        assert not any(name.startswith("forged") for name in lost) and not counters.streams.trackers.keys() & {
            f"forged-{i}" for i in range(100)}
        assert sum(lost.values()) == 200
    finally:
        sub.close()
        pub.close(linger_ms=0)
        tel.close()

"""Snapshots from the trainer to the evaluator through protocol.snapshot: every architecture
the trainer sends is accepted, and bad ones are counted as rejected under `snapshot_schema`."""

import pytest
import torch
import zmq

from boardlens.protocol import decode, encode
from boardlens.services.common import BadSnapshot, StartupError, receive
from boardlens.services.config import EvaluatorConfig, TrainerConfig
from boardlens.services.evaluator import EvaluatorMetrics, LiveEvaluator
from boardlens.services.telemetry import Telemetry
from boardlens.services.trainer import SnapshotPublisher, SweepTrainer, TrainerMetrics
from tests.services.helpers import free_ports

D = 16
KINDS = ("standard", "p_anneal", "gated", "gated_anneal", "topk:k=4", "batch_topk:k=4")
REJECTED = "boardlens_evaluator_snapshot_messages_rejected_total"


def _trainer_cfg(tmp_path, saes=KINDS) -> TrainerConfig:
    port, = free_ports(1)
    return TrainerConfig(run_dir=str(tmp_path / "train"), saes=saes, d_sae=32, batch_size=64,
                         buffer_activations=256, steps=100, warmup_steps=2, snapshot_bind=f"tcp://127.0.0.1:{port}",
                         metrics_port=0)


def _evaluator(tmp_path) -> tuple[LiveEvaluator, Telemetry]:
    tel = Telemetry("evaluator", 0)
    cfg = EvaluatorConfig(run_dir=str(tmp_path / "eval"), references=False, metrics_port=0)
    return LiveEvaluator(cfg, EvaluatorMetrics(tel)), tel


def _sent_snapshots(tmp_path) -> tuple[SweepTrainer, list[list]]:
    """The frames the trainer's SnapshotPublisher sends for one snapshot of every SAE."""
    cfg = _trainer_cfg(tmp_path)
    metrics = TrainerMetrics(Telemetry("trainer", 0))
    sweep = SweepTrainer(cfg, D, metrics, torch.device("cpu"))
    snap = SnapshotPublisher(cfg, metrics)
    sent = []
    try:
        snap.pub.send = lambda frames: sent.append([bytes(f) for f in frames])
        snap.source = {"game": "othello", "model": "m", "layer": 3}
        snap(sweep)
    finally:
        snap.close(drain_s=0)
        sweep.close()
    return sweep, sent


def test_every_architecture_the_trainer_sends_is_accepted(tmp_path):
    sweep, sent = _sent_snapshots(tmp_path)
    ev, _ = _evaluator(tmp_path)
    for frames in sent:
        ev.on_snapshot(decode(frames))
    assert sorted(ev.pending) == sorted(tr.name for tr in sweep.trainers)
    for tr in sweep.trainers:
        assert ev.pending[tr.name].ae.arch == tr.ae.arch and ev.pending[tr.name].step == 0
    assert [decode(f).header.seq for f in sent] == list(range(len(KINDS)))


class _FakeSubscriber:
    """What receive() needs of a Subscriber: frames as zmq.Frame objects, one per call."""

    def __init__(self, messages) -> None:
        self.messages = list(messages)

    def recv(self, timeout_ms):
        return [zmq.Frame(f) for f in self.messages.pop(0)] if self.messages else None

    def confirm_end(self, epoch, seq) -> None:
        pass


def _snapshot_frames(seq, **meta_changes):
    meta = {"sae": "standard-32-0.05", "step": 1, "arch": "relu", "hyperparams": "{}",
            **meta_changes}
    tensors = {"encoder.weight": torch.zeros(32, D), "encoder.bias": torch.zeros(32),
               "decoder.weight": torch.zeros(D, 32), "bias": torch.zeros(D)}
    return encode("snapshot", epoch="ab", seq=seq, game="othello", model="m", layer=3,
                  tensors=tensors, meta=meta)


def test_bad_snapshots_are_counted_under_snapshot_schema(tmp_path):
    ev, tel = _evaluator(tmp_path)
    messages = [_snapshot_frames(0, step=-1), _snapshot_frames(1, sae="a/b"),
                _snapshot_frames(2, arch="gated"),  # schema-valid, not the arch's tensors
                _snapshot_frames(3)]
    sub = _FakeSubscriber(messages)
    while receive(sub, ev.m.snapshot_counters, 0, lambda kind, msg: ev.on_snapshot(msg)):
        pass
    assert tel.registry.get_sample_value(REJECTED, {"reason": "snapshot_schema"}) == 3
    assert list(ev.pending) == ["standard-32-0.05"]


def test_a_snapshot_without_its_architecture_tensor_is_a_bad_snapshot(tmp_path):
    ev, _ = _evaluator(tmp_path)
    frames = [bytes(f) for f in _snapshot_frames(0)]
    msg = decode(frames)
    del msg.tensors["decoder.weight"]
    with pytest.raises(BadSnapshot, match="relu"):
        ev.on_snapshot(msg)


def test_an_sae_name_snapshots_cannot_carry_fails_at_start(tmp_path):
    cfg = _trainer_cfg(tmp_path, saes=("standard:name=my sae",))
    with pytest.raises(StartupError, match="name"):
        SweepTrainer(cfg, D, TrainerMetrics(Telemetry("trainer", 0)), torch.device("cpu"))


def test_a_failing_description_is_counted_and_logged_once_with_its_traceback(tmp_path, caplog):
    """The evaluation stands; every failure counts (boardlens_evaluator_describe_failures_total,
    alerted on when it repeats); the traceback is logged once per kind of failure."""
    from boardlens.sae.archs.relu import AutoEncoder
    from boardlens.services.evaluator import Snapshot
    from tests.services.helpers import synthetic_batch

    tel = Telemetry("evaluator", 0)
    cfg = EvaluatorConfig(run_dir=str(tmp_path / "eval"), references=False, metrics_port=0, train_games=16,
                          test_games=16, describe_every=1)
    ev = LiveEvaluator(cfg, EvaluatorMetrics(tel))
    (tmp_path / "eval" / "descriptions").write_text("a file where the descriptions folder goes")
    for seq in range(4):
        ev.on_batch(synthetic_batch("e", seq))
    assert ev.ready
    ae = AutoEncoder(32, 64)
    with caplog.at_level("ERROR", logger="boardlens"):
        first = ev.evaluate(Snapshot("standard-64", 10, ae))
        second = ev.evaluate(Snapshot("standard-64", 20, ae))
    assert first["step"] == 10 and second["step"] == 20  # evaluated all the same
    assert tel.registry.get_sample_value("boardlens_evaluator_describe_failures_total") == 2
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "describing standard-64 step 10 failed" in tracebacks[0].getMessage()
    assert any("step 20 failed again: FileExistsError" in r.getMessage() for r in caplog.records)

"""Status records (services/status.py): written by the services, read by `boardlens up` for its
progress line and stall detection, without any metrics port."""

from __future__ import annotations

import json
import math
import os
import re
import time

import pytest
import torch

from boardlens.services.common import keep_status
from boardlens.services.config import TrainerConfig
from boardlens.services.status import (
    SCHEMA,
    EvaluatorStatus,
    ProducerStatus,
    SaeEvaluation,
    SaeTraining,
    StatusFile,
    TrainerStatus,
    read_status,
    stamp,
    status_path,
    write_status,
)
from boardlens.services.telemetry import Telemetry
from boardlens.services.trainer import SweepTrainer, TrainerMetrics
from boardlens.services.up import StallWatch, progress_line
from tests.services.helpers import synthetic_batch

TRAINER = TrainerStatus(**stamp("running"), step=12, tokens=3000,
                        saes={"standard-64-0.05": SaeTraining(0.5, 7.25, 0.9), "p_anneal-64-0.05": SaeTraining(0.25, 3.0, 0.8)})
EVALUATOR = EvaluatorStatus(**stamp("running"), games={"train": 20, "test": 20}, evaluations=2,
                            saes={"standard-64-0.05": SaeEvaluation(10, 0.5, 0.125),
                                  "p_anneal-64-0.05": SaeEvaluation(10, 0.625, 0.0625)},
                            references={"linear_probe": 0.25, "random_sae-64": 0.0625}, gone=["vm:5557"])


@pytest.mark.parametrize("status", [ProducerStatus(**stamp("running"), tokens=5900, batches=2, games=128, seq=2),
                                    TRAINER, EVALUATOR, TrainerStatus(), TrainerStatus(gone=["p1", "p2"])])
def test_a_record_reads_back_as_written(tmp_path, status):
    write_status(tmp_path, status)
    assert read_status(tmp_path, type(status)) == status
    data = json.loads(status_path(tmp_path, status.service).read_text())
    assert data["schema"] == SCHEMA and data["service"] == status.service


def test_unusable_records_read_as_none(tmp_path):
    assert read_status(tmp_path, TrainerStatus) is None  # none yet
    path = status_path(tmp_path, "trainer")
    write_status(tmp_path, TRAINER)
    good = json.loads(path.read_text())
    for bad in ({**good, "schema": SCHEMA + 1}, {**good, "service": "producer"}, {**good, "step": "12"},
                {**good, "step": True}, {**good, "saes": {"x": {"loss": 1.0}}}, {**good, "saes": [1]}, [good]):
        path.write_text(json.dumps(bad))
        assert read_status(tmp_path, TrainerStatus) is None, bad
    path.write_text("{not json")
    assert read_status(tmp_path, TrainerStatus) is None
    # JSON has one number type: an integral float field reads back as a float; unknown keys
    # (a newer writer's added fields) are ignored
    path.write_text(json.dumps({**good, "saes": {"x": {"loss": 1, "l0": 2, "var_explained": 0}}, "new": 1}))
    assert read_status(tmp_path, TrainerStatus).saes == {"x": SaeTraining(1.0, 2.0, 0.0)}


def test_status_file_writes_when_due_and_when_forced(tmp_path):
    calls = []

    def make(state):
        calls.append(state)
        return ProducerStatus(**stamp(state), tokens=len(calls))

    f = StatusFile(tmp_path / "new" / "folder", make, every_s=60)
    f.update("a")
    f.update("b")  # not due: make is not even called
    assert calls == ["a"]
    f.update("stopped", force=True)
    status = read_status(tmp_path / "new" / "folder", ProducerStatus)
    assert (status.state, status.tokens, status.pid) == ("stopped", 2, os.getpid())


def test_an_unwritable_folder_never_stops_the_service(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    f = StatusFile(tmp_path / "file" / "sub", lambda s: ProducerStatus(**stamp(s)), every_s=0)
    f.update("a")
    f.update("b")
    assert sum("cannot write the status record" in r.message for r in caplog.records) == 1


def test_a_training_sweep_keeps_its_record(tmp_path, monkeypatch):
    """The real trainer consumer and Telemetry: progress rewrites the record, close writes the
    last one (what `up` shows after the trainer has exited)."""
    cfg = TrainerConfig(run_dir=str(tmp_path), saes=("standard", "p_anneal:anneal_start=1,n_updates=2,queue_len=2"), d_sae=64, batch_size=256,
                        buffer_activations=1024, steps=6, warmup_steps=1, metrics_port=0)
    tel = Telemetry("trainer", 0)
    sweep = SweepTrainer(cfg, 32, TrainerMetrics(tel), torch.device("cpu"))
    keep_status(tel, cfg.run_dir, sweep.status)
    assert read_status(tmp_path, TrainerStatus).state == "starting"
    seq = 0
    while not sweep.done:
        sweep.on_batch(synthetic_batch("e", seq))
        seq += 1
        tel.progress()
    tel.close()
    sweep.close()
    status = read_status(tmp_path, TrainerStatus)
    assert status.state == "stopped" and status.step == 6 and status.progress == 6
    assert status.tokens == seq * 16 * 59
    assert set(status.saes) == {"standard-64-0.05", "p_anneal-64-0.05"}
    assert all(math.isfinite(s.loss) and s.l0 > 0 for s in status.saes.values())


def test_up_progress_line_reads_the_records(tmp_path):
    t0 = time.time() - 10
    assert progress_line(tmp_path, t0).endswith("tokens 0 (0/s)")  # nothing written yet
    write_status(tmp_path, ProducerStatus(**stamp("running"), tokens=50_000, batches=9, games=576, seq=9))
    write_status(tmp_path, EvaluatorStatus(**stamp("waiting"), games={"train": 7, "test": 3}))
    line = progress_line(tmp_path, t0)
    assert re.search(r"tokens 50,000 \([0-9,]+/s\) \| eval set 10 games$", line) and "step" not in line
    write_status(tmp_path, TRAINER)
    write_status(tmp_path, EVALUATOR)
    parts = progress_line(tmp_path, t0).split(" | ")
    assert parts[2:] == ["step 12", "p_anneal-64-0.05: loss 0.250 L0 3.0", "standard-64-0.05: loss 0.500 L0 7.2",
                         "best cov 0.625 rec 0.125", "rec linear_probe 0.250 random_sae-64 0.062"]


def test_up_stall_watch_follows_the_trainer_record(tmp_path):
    watch = StallWatch(tmp_path)
    assert not watch.stalled(0.2)
    time.sleep(0.3)
    assert watch.stalled(0.2)  # no record at all: no progress
    write_status(tmp_path, TrainerStatus(**stamp("running"), step=1))
    assert not watch.stalled(0.2)
    write_status(tmp_path, TrainerStatus(**stamp("running"), step=1))  # rewritten, same step
    time.sleep(0.3)
    assert watch.stalled(0.2)
    write_status(tmp_path, TrainerStatus(**stamp("running"), step=2))
    assert not watch.stalled(0.2)

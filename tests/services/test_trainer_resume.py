"""Trainer checkpoints: exact resume of a whole sweep, SIGTERM within the grace period, and
checkpoints that survive a kill at any moment (real processes and sockets)."""

import os
import random
import signal
import time

import pytest
import torch

from boardlens.protocol import (
    ActivationBatch,
    Publisher,
    TransportConfig,
    encode,
    encode_batch,
    new_epoch,
)
from boardlens.sae.checkpoint import latest_checkpoint, read_checkpoint
from boardlens.services.common import StartupError
from boardlens.services.config import TrainerConfig
from boardlens.services.telemetry import Telemetry
from boardlens.services.trainer import EXIT_STOPPED, SweepTrainer, TrainerMetrics, find_resume_point
from tests.services.helpers import free_ports, scrape, services, start, value, wait_for

D = 16
ALL_KINDS = ("standard:resample_every=6", "p_anneal:anneal_start=3,n_updates=4,queue_len=2", "gated:normalize=1",
             "gated_anneal:anneal_start=3,n_updates=4", "topk:k=4,threshold_start_step=2",
             "batch_topk:k=4,threshold_start_step=2")


def _batches(n=60, seed=0, B=4):
    g = torch.Generator().manual_seed(seed)
    out = []
    for seq in range(n):
        T = 20
        out.append(ActivationBatch(
            acts=torch.randn(B, T, D, generator=g) + 0.3, tokens=torch.zeros(B, T, dtype=torch.long),
            game_ids=torch.arange(B), lengths=torch.randint(5, T + 1, (B,), generator=g).to(torch.int16),
            label_pos=torch.zeros(B, 1, dtype=torch.int16), labels={}, epoch="e", seq=seq, game="othello",
            model="m", layer=3))
    return out


def _cfg(run_dir, **kw):
    return TrainerConfig(run_dir=str(run_dir), saes=ALL_KINDS, d_sae=32, batch_size=64, buffer_activations=256,
                         steps=40, warmup_steps=2, lr=3e-3, checkpoint_every=1000, snapshot_every=1000,
                         metrics_port=0, **kw)


def _sweep(cfg, **kw):
    return SweepTrainer(cfg, D, TrainerMetrics(Telemetry("trainer", 0)), torch.device("cpu"), **kw)


def test_a_resumed_sweep_trains_bit_identically(tmp_path):
    batches = _batches(20, B=16)  # messages of ~200 rows: more than the buffer has free
    straight = _sweep(_cfg(tmp_path / "a"))
    for b in batches:
        straight.on_batch(b)
    assert straight.done

    cfg = _cfg(tmp_path / "b")
    stopping = {"at": 17}
    first = _sweep(cfg, should_stop=lambda: first.step >= stopping["at"])
    fed = 0
    while first.step < stopping["at"]:
        first.on_batch(batches[fed])
        fed += 1
    assert first.pending, "the stop should leave rows of the last message unbuffered"
    first.checkpoint()
    first.close()

    resumed = _sweep(cfg, resume_from=find_resume_point(cfg))
    assert resumed.step == 17 and sum(p.shape[0] for p in resumed.pending) == sum(p.shape[0] for p in first.pending)
    for b in batches[fed:]:
        resumed.on_batch(b)
    assert resumed.step == straight.step == 40
    for a, b in zip(straight.trainers, resumed.trainers, strict=True):
        for name, t in a.ae.state_dict().items():
            assert torch.equal(t, b.ae.state_dict()[name]), (a.name, name)
        assert a.schedule_state() == b.schedule_state()
        for pa, pb in zip(a.ae.parameters(), b.ae.parameters(), strict=True):
            assert torch.equal(a.opt.state[pa]["exp_avg_sq"], b.opt.state[pb]["exp_avg_sq"])
    assert torch.equal(straight.buffer.unread, resumed.buffer.unread)


def test_resume_modes_and_mismatches(tmp_path):
    with pytest.raises(StartupError, match="no complete checkpoint"):
        find_resume_point(_cfg(tmp_path, resume="require"))
    assert find_resume_point(_cfg(tmp_path)) is None  # auto, nothing there: start fresh
    sweep = _sweep(_cfg(tmp_path))
    for b in _batches(12):
        sweep.on_batch(b)
    sweep.checkpoint()
    assert (tmp_path / "checkpoints" / "latest" / "topk-32-k4.safetensors").exists()
    other = TrainerConfig(**{**_cfg(tmp_path).__dict__, "saes": ("standard:penalty=0.1",)})
    with pytest.raises(StartupError, match="holds SAEs"):
        _sweep(other, resume_from=find_resume_point(other))
    changed = TrainerConfig(**{**_cfg(tmp_path).__dict__, "lr": 1e-4})
    with pytest.raises(StartupError, match="other settings"):
        _sweep(changed, resume_from=find_resume_point(changed))
    assert find_resume_point(_cfg(tmp_path, resume="never")) is None
    assert not (tmp_path / "checkpoints").exists()


def _trainer(tmp_path, data, snaps, tm, *extra, grace="20"):
    return start("train", "--connect", f"tcp://127.0.0.1:{data}", "--snapshot-bind", f"tcp://127.0.0.1:{snaps}",
                 "--run-dir", str(tmp_path / "run"), "--saes", "standard", "--saes", "topk:k=8", "--d-sae", "64",
                 "--batch-size", "128", "--buffer-activations", "1024", "--warmup-steps", "1", "--threads", "1",
                 "--steps", "100000", "--stop-grace-s", grace, "--metrics-port", str(tm), *extra,
                 log_path=tmp_path / "trainer.log")


def _feed(pub, epoch, seqs):
    for b in _batches(len(seqs), seed=seqs[0]):
        b.seq, b.epoch = seqs[0] + b.seq, epoch
        pub.send(encode_batch(b))


@pytest.mark.timeout(240)
def test_sigterm_checkpoints_within_the_grace_period_and_a_restart_resumes(tmp_path):
    data, snaps, tm = free_ports(3)
    pub = Publisher(f"tcp://127.0.0.1:{data}", None, TransportConfig(send_timeout_ms=10_000))
    epoch = new_epoch()
    try:
        procs = {"trainer": _trainer(tmp_path, data, snaps, tm)}
        with services(procs, {"trainer": tmp_path / "trainer.log"}):
            assert pub.wait_for_subscribers(1, 60)
            _feed(pub, epoch, list(range(0, 60)))
            wait_for(lambda: (s := scrape(tm)) and value(s, "boardlens_trainer_steps_total", sae="standard-64-0.05") >= 5,
                     60, "training", procs)
            t0 = time.monotonic()
            procs["trainer"].send_signal(signal.SIGTERM)
            assert procs["trainer"].wait(timeout=20) == EXIT_STOPPED  # not done: a Job restarts it
            assert time.monotonic() - t0 < 20
        folder = latest_checkpoint(tmp_path / "run" / "checkpoints")
        sweep, states = read_checkpoint(folder)
        stopped_at = sweep["step"]
        assert stopped_at >= 5 and states["standard-64-0.05"]["step"] == stopped_at
        log = (tmp_path / "trainer.log").read_text()
        assert f"stopped at step {stopped_at}" in log

        procs = {"trainer": _trainer(tmp_path, data, snaps, tm)}
        with services(procs, {"trainer": tmp_path / "trainer.log"}):
            assert pub.wait_for_subscribers(1, 60)
            wait_for(lambda: f"resumed from {folder}" in (tmp_path / "trainer.log").read_text(), 60, "resume", procs)
            _feed(pub, epoch, list(range(60, 120)))
            pub.send(encode("end", epoch=epoch, seq=120, game="othello", model="m", layer=3, tensors={}))
            assert procs["trainer"].wait(timeout=60) == 0
        sweep, _ = read_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
        assert sweep["step"] > stopped_at  # went on from the checkpoint, not from zero
    finally:
        pub.close()


@pytest.mark.timeout(240)
def test_a_kill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    data, snaps, tm = free_ports(3)
    pub = Publisher(f"tcp://127.0.0.1:{data}", None, TransportConfig(send_timeout_ms=10_000))
    epoch, rng, last_step, seq = new_epoch(), random.Random(0), 0, 0
    try:
        for attempt in range(4):  # checkpoint every step, SIGKILL at a random moment
            proc = _trainer(tmp_path, data, snaps, tm, "--checkpoint-every", "1")
            assert pub.wait_for_subscribers(1, 60)
            if attempt:
                wait_for(lambda: "resumed from" in (tmp_path / "trainer.log").read_text(), 60, "resume",
                         {"trainer": proc})
            deadline = time.monotonic() + rng.uniform(2.0, 5.0)
            while time.monotonic() < deadline and proc.poll() is None:
                _feed(pub, epoch, [seq])
                seq += 1
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            folder = latest_checkpoint(tmp_path / "run" / "checkpoints")
            assert folder is not None
            sweep, states = read_checkpoint(folder)  # complete and readable
            assert set(states) == {"standard-64-0.05", "topk-64-k8"}
            assert sweep["step"] >= last_step
            last_step = sweep["step"]
            leftovers = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("step-")]
            assert len(leftovers) <= 3, leftovers  # keep=2 plus at most the one being replaced
        assert last_step > 0
    finally:
        pub.close()

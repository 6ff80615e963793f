"""Trainer: a lossless consumer that trains K SAEs together from one activation stream.

    boardlens train --sae standard:penalty=0.05 --sae p_anneal:penalty=0.05 --steps 5000

Every valid position's activation goes through a shuffle buffer; each drawn batch is one
optimiser step of every SAE of the sweep. Checkpoints (`<run>/checkpoints/<sae>.safetensors`
+ `.json`, atomic) every `checkpoint_every` steps and at the end; snapshots (kind
'snapshot', one message per SAE, the SAE's tensors + meta) are published to evaluators every
`snapshot_every` steps over a lossless XPUB; a snapshot that cannot be delivered within the
send timeout is dropped and counted (evaluators only need the latest). At `steps`, or on
the producer's end of stream, it checkpoints, sends 'end' to evaluators and exits. On
SIGTERM it checkpoints and exits without 'end'. Activations still in the shuffle buffer are
lost on exit (at most `buffer_activations`); resuming optimiser state arrives with issue 4.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
import zmq

from boardlens.sae.buffer import ShuffleBuffer
from boardlens.sae.io import sae_tensors, save_sae
from boardlens.sae.sweep import TrainerSpec, build_trainers
from protocol import ActivationBatch, Publisher, SendTimeout, Subscriber, encode, new_epoch
from protocol.transport import tune_malloc
from services.common import (
    IncompatibleBatch,
    MessageCounters,
    log,
    log_config,
    pick_device,
    receive,
    set_threads,
    stop_on_signals,
    transport,
)
from services.config import TrainerConfig
from services.telemetry import Telemetry

_STEP_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class TrainerMetrics:
    def __init__(self, tel: Telemetry) -> None:
        self.counters = MessageCounters(tel, "trainer")
        self.tokens = tel.counter("trainer_tokens_total", "Activations received into the buffer")
        self.steps = tel.counter("trainer_steps_total", "Optimiser steps", ["sae"])
        self.trained = tel.counter("trainer_trained_tokens_total", "Activations trained on", ["sae"])
        self.step_time = tel.histogram("trainer_step_seconds", "Wall time of one sweep step (all SAEs)",
                                       _STEP_SECONDS)
        self.loss = tel.gauge("sae_loss", "Latest loss terms", ["sae", "term"])
        self.l0 = tel.gauge("sae_l0", "Mean active latents per activation (latest batch)", ["sae"])
        self.fve = tel.gauge("sae_variance_explained", "Fraction of variance explained (latest batch)",
                             ["sae"])
        self.dead = tel.gauge("sae_dead_fraction", "Latents silent for the dead window", ["sae"])
        self.p = tel.gauge("sae_p", "Current p of the sparsity penalty (1 = L1)", ["sae"])
        self.alpha = tel.gauge("sae_alpha", "Current sparsity coefficient", ["sae"])
        self.buffer = tel.gauge("trainer_buffer_activations", "Unread activations in the shuffle buffer")
        self.snapshots = tel.counter("trainer_snapshots_total", "Snapshots published", ["outcome"])
        for outcome in ("sent", "dropped"):  # zero series, so rate() sees the first event
            self.snapshots.labels(outcome)

    def init_sae(self, name: str) -> None:
        """Zero series for a new SAE's counters."""
        self.steps.labels(name)
        self.trained.labels(name)


class SweepTrainer:
    """The consumer: `on_batch(batch)` feeds the buffer and trains; testable without sockets."""

    def __init__(self, cfg: TrainerConfig, d_in: int, metrics: TrainerMetrics, device: torch.device,
                 on_snapshot=None) -> None:
        self.cfg, self.m, self.device = cfg, metrics, device
        specs = [TrainerSpec.parse(s) for s in cfg.saes]
        defaults = {"d_sae": cfg.d_sae, "penalty": cfg.penalty, "lr": cfg.lr,
                    "warmup_steps": cfg.warmup_steps, "recon": cfg.recon}
        self.trainers = build_trainers(specs, d_in, cfg.steps, defaults, device=str(device))
        for tr in self.trainers:
            metrics.init_sae(tr.name)
        self.buffer = ShuffleBuffer(cfg.buffer_activations, d_in, device=device)
        self.on_snapshot = on_snapshot
        self.step = 0
        self.run_dir = Path(cfg.run_dir)
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.log = open(self.run_dir / "train.jsonl", "a")

    @property
    def done(self) -> bool:
        return self.step >= self.cfg.steps

    def on_batch(self, batch: ActivationBatch) -> None:
        """Take every valid position of the batch; train while the buffer has enough."""
        if batch.acts.shape[-1] != self.buffer.d:
            raise IncompatibleBatch(f"activations are {batch.acts.shape[-1]} wide, the SAEs "
                                    f"{self.buffer.d} (another model on the stream?)")
        T = batch.acts.shape[1]
        valid = torch.arange(T)[None, :] < batch.lengths.long()[:, None]  # (B, T)
        rows = batch.acts[valid].float()  # (N, d)
        self.m.tokens.inc(rows.shape[0])
        while rows.shape[0] and not self.done:
            n = self.buffer.push(rows)
            rows = rows[n:]
            self.train_ready()
        self.m.buffer.set(len(self.buffer))

    def train_ready(self, drain: bool = False) -> None:
        """Step while the buffer holds enough unread rows (drain: down to one batch)."""
        bs = self.cfg.batch_size
        while not self.done and (self.buffer.ready(bs) or (drain and len(self.buffer) >= bs)):
            x = self.buffer.pop(bs).to(self.device)
            self.train_step(x)

    def train_step(self, x: torch.Tensor) -> None:
        t0 = time.perf_counter()
        record = {"step": self.step + 1, "time": time.time()}
        for tr in self.trainers:
            s = tr.update(x)
            name = tr.name
            self.m.steps.labels(name).inc()
            self.m.trained.labels(name).inc(x.shape[0])
            for term in ("loss", "recon", "sparsity"):
                self.m.loss.labels(name, term).set(getattr(s, term))
            self.m.l0.labels(name).set(s.l0)
            self.m.fve.labels(name).set(s.var_explained)
            self.m.dead.labels(name).set(s.dead_fraction)
            sched = tr.schedule_state()
            self.m.p.labels(name).set(sched.get("p", 1.0))
            self.m.alpha.labels(name).set(sched.get("alpha", tr.penalty))
            record[name] = {**s._asdict(), **sched}
        self.step += 1
        self.m.step_time.observe(time.perf_counter() - t0)
        if self.step % self.cfg.log_every == 0 or self.done:
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()
        # The final checkpoint and snapshot are written by run() however training ends.
        if self.step % self.cfg.checkpoint_every == 0 and not self.done:
            self.checkpoint()
        if self.on_snapshot and self.step % self.cfg.snapshot_every == 0 and not self.done:
            self.on_snapshot(self)

    def checkpoint(self) -> None:
        for tr in self.trainers:
            save_sae(self.run_dir / "checkpoints", tr.name, tr.ae,
                     {"name": tr.name, "step": tr.step, "hyperparams": tr.hyperparams(),
                      "schedule": tr.schedule_state()})

    def close(self) -> None:
        self.log.close()


class SnapshotPublisher:
    """Publishes SAE snapshots (and 'end') to evaluators over a lossless XPUB."""

    def __init__(self, cfg: TrainerConfig, metrics: TrainerMetrics) -> None:
        # A busy evaluator must not stall training: a snapshot waits at most 2 s, then is
        # dropped (counted); the next one supersedes it anyway.
        fast = dataclasses.replace(transport(cfg), send_timeout_ms=min(cfg.send_timeout_ms, 2000))
        self.pub = Publisher(cfg.snapshot_bind, None, fast)
        self.m, self.epoch, self.seq = metrics, new_epoch(), 0
        self.source = {"game": "", "model": "", "layer": 0}  # the stream's, from its first batch

    def set_source(self, batch: ActivationBatch) -> None:
        self.source = {"game": batch.game, "model": batch.model, "layer": batch.layer}

    def _send(self, kind: str, tensors: dict, meta: dict) -> bool:
        frames = encode(kind, epoch=self.epoch, seq=self.seq, tensors=tensors, meta=meta, **self.source)
        self.seq += 1
        try:
            self.pub.send(frames)
            return True
        except SendTimeout:
            return False

    def __call__(self, sweep: SweepTrainer) -> None:
        for tr in sweep.trainers:
            meta = {"sae": tr.name, "step": tr.step, "arch": tr.ae.arch,
                    "hyperparams": json.dumps(tr.hyperparams())}
            ok = self._send("snapshot", sae_tensors(tr.ae), meta)
            self.m.snapshots.labels("sent" if ok else "dropped").inc()

    def end(self, step: int) -> None:
        self._send("end", {}, {"step": step})

    def close(self, drain_s: float = 30.0) -> None:
        """Let the final snapshots and 'end' reach evaluators (bounded), then close."""
        self.pub.close(linger_ms=int(drain_s * 1000))


def run(cfg: TrainerConfig) -> int:
    """Train until `steps`, end of stream or SIGTERM; returns the steps done."""
    log_config("trainer", cfg)
    set_threads(cfg.threads)
    tune_malloc()  # keep freed message buffers: measured -70..150 us CPU per 1 MiB message
    stop = stop_on_signals()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "trainer_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    tel = Telemetry("trainer", cfg.metrics_port, stall_after_s=cfg.health_stall_s)
    m = TrainerMetrics(tel)
    device = pick_device(cfg.device)
    snap = SnapshotPublisher(cfg, m)
    sub = Subscriber(cfg.connect, lossy=False, cfg=transport(cfg))
    state: dict = {"sweep": None, "ended": False}

    def on_message(kind: str, payload) -> None:
        if kind == "end":
            state["ended"] = True
            return
        if kind != "batch":
            return
        if state["sweep"] is None:  # the first batch tells the width
            snap.set_source(payload)
            state["sweep"] = SweepTrainer(cfg, payload.acts.shape[-1], m, device, snap)
            log.info("trainer: %d SAEs on d=%d: %s", len(state["sweep"].trainers), payload.acts.shape[-1],
                     ", ".join(t.name for t in state["sweep"].trainers))
        state["sweep"].on_batch(payload)

    try:
        while not stop.is_set():
            sweep = state["sweep"]
            if sweep is not None and sweep.done:
                break
            if state["ended"]:
                if sweep is not None:
                    sweep.train_ready(drain=True)
                break
            if receive(sub, m.counters, 500, on_message):
                tel.progress()
            elif sweep is None:
                tel.idle("waiting for the producer")
        sweep = state["sweep"]
        if sweep is not None:
            sweep.checkpoint()
            if not stop.is_set():
                snap(sweep)
                snap.end(sweep.step)
            sweep.close()
            log.info("trainer: stopped at step %d", sweep.step)
        return sweep.step if sweep else 0
    finally:
        sub.close()
        snap.close()
        zmq.Context.instance().term()  # waits for the snapshot socket's queue (bounded linger)
        tel.close()

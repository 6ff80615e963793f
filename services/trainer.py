"""Trainer: a lossless consumer that trains K SAEs together from the activation stream.

    boardlens train --saes standard:penalty=0.05 --saes p_anneal:penalty=0.02..0.08/20 --steps 5000
    boardlens train --connect tcp://a:5555,tcp://b:5555 --shard 0/2 ...   # 2 producers, half the sweep

It consumes every batch of every producer `connect` names (fair-queued; order and loss tracked
per producer), and stops at `steps` or once every producer has sent its end. With `shard`
I/M it trains the sweep's SAEs I, I+M, I+2M, ... under their whole-sweep names and seeds, in
<run_dir>/shard-I-of-M, so that M processes train one sweep that `report` and `score` read as
one run folder.

Every valid position's activation goes through a shuffle buffer; each drawn batch is one
optimiser step of every SAE of the sweep (on a GPU the batch is moved to the device once for
all K). Snapshots (kind 'snapshot', one message per SAE: its tensors + meta) go to evaluators
every `snapshot_every` steps over a lossless XPUB; one that cannot be delivered within 2 s is
dropped and counted (evaluators only need the latest).

Checkpoints (boardlens/sae/checkpoint.py) hold the whole sweep: every trainer's exact state,
the shuffle buffer and the rows received but not yet buffered. They are written every
`checkpoint_every` steps, at the end and on SIGTERM, atomically. With `resume` 'auto' a
restarted trainer continues from the newest one; fed the same activations from there, it
trains bit-identically (CPU) to a run that never stopped. What a restart loses: messages
that were in flight on the socket when it stopped (the producer streams on; nothing is
replayed), and the train.jsonl lines written after the last checkpoint are written again.
On SIGTERM it stops at the next step boundary, checkpoints and exits; after `stop_grace_s`
it exits anyway (the previous checkpoint is intact).

A producer that sends nothing, not even a heartbeat, for `sender_timeout_s` is declared gone
(boardlens_trainer_producers_lost_total); once every producer has ended or gone the trainer
trains what it has received and exits with EXIT_INCOMPLETE.

Exit status: 0 once the run is complete (its steps, or the end of the stream); EXIT_INCOMPLETE
(4) when the stream ended because producers were lost (everything received is trained); EXIT_STOPPED
(143, as a process killed by SIGTERM) when a signal stopped it first, so a supervisor (a
Kubernetes Job, systemd's Restart=on-failure) restarts it to resume instead of counting an
evicted run as done; EXIT_GRACE_EXCEEDED (3) when the checkpoint did not finish in time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import NamedTuple

import torch

from boardlens.protocol import (
    ActivationBatch,
    ProtocolError,
    Publisher,
    SaeSnapshot,
    SendTimeout,
    Subscriber,
    encode,
    encode_snapshot,
    new_epoch,
    validate_sae_name,
)
from boardlens.protocol.transport import tune_malloc
from boardlens.sae.buffer import ShuffleBuffer
from boardlens.sae.checkpoint import latest_checkpoint, read_checkpoint, write_checkpoint
from boardlens.sae.io import sae_tensors
from boardlens.sae.sweep import build_trainers, expand_specs
from boardlens.services import metrics
from boardlens.services.common import (
    EXIT_INCOMPLETE,
    IncompatibleBatch,
    MessageCounters,
    StartupError,
    close_context,
    curve,
    keep_alive,
    keep_status,
    log,
    log_config,
    pick_device,
    prepare_run_dir,
    receive,
    sender_name,
    set_threads,
    stop_on_signals,
    transport,
)
from boardlens.services.config import TrainerConfig, endpoints
from boardlens.services.staging import ToDevice
from boardlens.services.status import SaeTraining, StreamCount, TrainerStatus, stamp
from boardlens.services.telemetry import Telemetry

_LOSS_TERMS = ("loss", "recon", "sparsity", "aux")
EXIT_GRACE_EXCEEDED = 3
EXIT_STOPPED = 143  # 128 + SIGTERM


class TrainerMetrics:
    def __init__(self, tel: Telemetry) -> None:
        self.counters = MessageCounters(tel, metrics.TRAINER_DATA)
        self.tokens = tel.metric(metrics.TRAINER_TOKENS)
        self.steps = tel.metric(metrics.TRAINER_STEPS)
        self.skipped = tel.metric(metrics.TRAINER_STEPS_SKIPPED)
        self.trained = tel.metric(metrics.TRAINER_TRAINED_TOKENS)
        self.step_time = tel.metric(metrics.TRAINER_STEP)
        self.update_time = tel.metric(metrics.TRAINER_UPDATE)
        self.loss = tel.metric(metrics.TRAINER_LOSS)
        self.l0 = tel.metric(metrics.TRAINER_L0)
        self.fve = tel.metric(metrics.TRAINER_VARIANCE_EXPLAINED)
        self.dead = tel.metric(metrics.TRAINER_DEAD_LATENTS)
        self.p = tel.metric(metrics.TRAINER_SPARSITY_P)
        self.alpha = tel.metric(metrics.TRAINER_SPARSITY_ALPHA)
        self.buffer = tel.metric(metrics.TRAINER_BUFFER)
        self.snapshots = tel.metric(metrics.TRAINER_SNAPSHOTS)
        self.auth_denied = tel.metric(metrics.TRAINER_AUTH_DENIED)
        self.ckpt_seconds = tel.metric(metrics.TRAINER_LAST_CHECKPOINT)
        self.ckpt_step = tel.metric(metrics.TRAINER_LAST_CHECKPOINT_STEP)
        for outcome in ("sent", "dropped"):  # zero series, so rate() sees the first event
            self.snapshots.labels(outcome)

    def init_sae(self, name: str) -> None:
        """Zero series for a new SAE's counters."""
        self.steps.labels(name)
        self.skipped.labels(name)
        self.trained.labels(name)


class ResumePoint(NamedTuple):
    folder: Path
    sweep: dict  # sweep state (step, buffer, pending rows, source, sae names)
    states: dict  # sae name -> trainer state


def find_resume_point(cfg: TrainerConfig) -> ResumePoint | None:
    """The checkpoint to continue from, per cfg.resume (never: old checkpoints are removed)."""
    root = Path(cfg.shard_dir) / "checkpoints"
    if cfg.resume == "never":
        if root.exists():
            shutil.rmtree(root)
            log.info("trainer: resume=never, removed the old checkpoints in %s", root)
        return None
    folder = latest_checkpoint(root)
    if folder is None:
        if cfg.resume == "require":
            raise StartupError(f"resume=require but {root} holds no complete checkpoint")
        return None
    try:
        return ResumePoint(folder, *read_checkpoint(folder))
    except ValueError as e:
        raise StartupError(f"cannot resume: {e} (--resume never starts afresh)") from e


def hard_exit_after_grace(stop: threading.Event, grace_s: float) -> None:
    """Once `stop` is set, give the service grace_s to checkpoint and exit, then exit anyway.

    A hard exit mid-write is safe: checkpoints are atomic, so the previous one stays valid.
    """

    def watch() -> None:
        stop.wait()
        time.sleep(grace_s)
        log.error("trainer: still running %.0f s after the stop signal; exiting without a final checkpoint", grace_s)
        os._exit(EXIT_GRACE_EXCEEDED)

    threading.Thread(target=watch, name="grace-watchdog", daemon=True).start()


class SweepTrainer:
    """The consumer: `on_batch(batch)` feeds the buffer and trains; testable without sockets.

    `should_stop()` is polled between steps: when it turns true, training pauses at a step
    boundary and unbuffered rows wait in `pending` (they are part of the checkpoint).
    """

    def __init__(self, cfg: TrainerConfig, d_in: int, metrics: TrainerMetrics, device: torch.device,
                 on_snapshot=None, should_stop=lambda: False, resume_from: ResumePoint | None = None) -> None:
        self.cfg, self.m, self.device = cfg, metrics, device
        self.trainers = build_trainers(expand_specs(cfg.saes), d_in, cfg.steps, cfg.sae_defaults(),
                                       device=str(device), shard=cfg.shard_index)
        try:  # names travel in snapshots: a bad name= fails now, not at the first snapshot
            for tr in self.trainers:
                validate_sae_name(tr.name)
        except ProtocolError as e:
            raise StartupError(f"{e.detail} (an SAE spec's name=)") from e
        for tr in self.trainers:
            metrics.init_sae(tr.name)
        self.update_s = {tr.name: 0.0 for tr in self.trainers}  # EMA of each SAE's update seconds
        self.buffer = ShuffleBuffer(cfg.buffer_activations, d_in, device=device)
        self.to_device = ToDevice(device)  # pinned, side-stream copies on CUDA; .float() on the CPU
        self.pending: list[torch.Tensor] = []  # rows received, not yet in the buffer: (n, d) each
        self.on_snapshot, self.should_stop = on_snapshot, should_stop
        self.source: dict = {}  # game, model, layer of the stream (from its first batch)
        self.streams: dict[str, StreamCount] = {}  # per producer (meta 'src'): what this process took
        self.step = 0
        self.tokens = 0  # rows received by this process
        self.latest: dict[str, SaeTraining] = {}  # each SAE on its latest batch, for the status record
        self.checkpointed_step = -1
        self.run_dir = Path(cfg.shard_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_from is not None:
            self.restore(resume_from)
        self.log = open(self.run_dir / "train.jsonl", "a")

    def restore(self, point: ResumePoint) -> None:
        try:
            names = [tr.name for tr in self.trainers]
            if sorted(point.sweep["saes"]) != sorted(names):
                raise ValueError(f"it holds SAEs {point.sweep['saes']}, the config asks for {names}")
            for tr in self.trainers:
                tr.load_state_dict(point.states[tr.name])
            self.buffer.load_state_dict(point.sweep["buffer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise StartupError(f"cannot resume from {point.folder}: {e} (--resume never starts afresh)") from e
        pending = point.sweep["pending"]
        self.pending = [pending.to(self.device)] if pending.numel() else []  # like received rows
        self.source = dict(point.sweep["source"])
        self.step = self.checkpointed_step = int(point.sweep["step"])
        log.info("trainer: resumed from %s at step %d (%d buffered + %d pending rows)", point.folder, self.step,
                 len(self.buffer), pending.shape[0])

    @property
    def done(self) -> bool:
        return self.step >= self.cfg.steps

    def on_batch(self, batch: ActivationBatch) -> None:
        """Take every valid position of the batch; train while the buffer has enough."""
        if batch.acts.shape[-1] != self.buffer.d:
            raise IncompatibleBatch(f"activations are {batch.acts.shape[-1]} wide, the SAEs "
                                    f"{self.buffer.d} (another model on the stream?)")
        source = {"game": batch.game, "model": batch.model, "layer": batch.layer}
        if self.source and source != self.source:  # several producers must stream the same thing
            raise IncompatibleBatch(f"batch of {source}, the sweep trains on {self.source}")
        self.source = source
        rows = self.to_device(batch.valid_acts())  # (N, d) float32 on the device; bf16 widened there
        self.m.tokens.inc(rows.shape[0])
        self.tokens += rows.shape[0]
        self.count(batch, rows.shape[0])
        if rows.shape[0] and not self.done:
            self.pending.append(rows)
        self.pump()

    def count(self, batch: ActivationBatch, rows: int) -> None:
        """Per producer: batches and rows taken, and the seqs they span (the current epoch)."""
        src = str(batch.meta.get("src", ""))
        c = self.streams.get(src)
        if c is None or c.epoch != batch.epoch:
            c = StreamCount(batch.epoch, 0, 0, batch.seq, batch.seq)
        self.streams[src] = StreamCount(c.epoch, c.batches + 1, c.rows + rows, c.first_seq, batch.seq)

    def pump(self) -> None:
        """Move pending rows into the buffer, training whenever it is ready."""
        while self.pending and not self.done and not self.should_stop():
            rows = self.pending[0]
            n = self.buffer.push(rows)
            if n == rows.shape[0]:
                self.pending.pop(0)
            else:
                self.pending[0] = rows[n:]
            self.train_ready()
        self.m.buffer.set(len(self.buffer))

    def train_ready(self, drain: bool = False) -> None:
        """Step while the buffer holds enough unread rows (drain: down to one batch)."""
        bs = self.cfg.batch_size
        while (not self.done and not self.should_stop()
               and (self.buffer.ready(bs) or (drain and len(self.buffer) >= bs))):
            x = self.buffer.pop(bs).to(self.device)  # one transfer for all K SAEs
            self.train_step(x)

    def train_step(self, x: torch.Tensor) -> None:
        t0 = time.perf_counter()
        record = {"step": self.step + 1, "time": time.time()}
        x_var = x.var(dim=0).sum()  # shared by every SAE's variance explained
        for tr in self.trainers:
            t_sae = time.perf_counter()
            s = tr.update(x, x_var)
            name = tr.name
            if s is None:  # non-finite loss or gradient: no update, nothing reaches a checkpoint
                self.m.skipped.labels(name).inc()
                log.warning("trainer: %s skipped step %d: non-finite loss or gradient", name, self.step + 1)
                continue
            dt = time.perf_counter() - t_sae
            self.update_s[name] = dt if self.update_s[name] == 0 else 0.9 * self.update_s[name] + 0.1 * dt
            self.m.update_time.labels(name).observe(dt)
            self.m.steps.labels(name).inc()
            self.m.trained.labels(name).inc(x.shape[0])
            for term in _LOSS_TERMS:
                self.m.loss.labels(name, term).set(getattr(s, term))
            self.m.l0.labels(name).set(s.l0)
            self.m.fve.labels(name).set(s.var_explained)
            self.m.dead.labels(name).set(s.dead_fraction)
            sched = tr.schedule_state()
            self.m.p.labels(name).set(sched.get("p", 1.0))
            self.m.alpha.labels(name).set(sched.get("alpha", tr.penalty))
            record[name] = {**s._asdict(), **sched, "steps_per_s": 1 / self.update_s[name]}
            self.latest[name] = SaeTraining(s.loss, s.l0, s.var_explained)
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
        """One complete checkpoint of the sweep (skipped if this step already has one)."""
        if self.step == self.checkpointed_step:
            return
        t0 = time.perf_counter()
        pending = torch.cat(self.pending) if self.pending else torch.empty(0, self.buffer.d)
        state = {"step": self.step, "buffer": self.buffer.state_dict(), "pending": pending.cpu(),
                 "source": self.source}
        write_checkpoint(self.ckpt_root, self.step, self.trainers, state, self.source, self.cfg.keep_checkpoints)
        self.checkpointed_step = self.step
        dt = time.perf_counter() - t0
        self.m.ckpt_seconds.set(dt)
        self.m.ckpt_step.set(self.step)
        if dt > self.cfg.stop_grace_s / 2:
            log.warning("trainer: a checkpoint took %.1f s, more than half of stop_grace_s=%.0f", dt,
                        self.cfg.stop_grace_s)

    def status(self, state: str) -> TrainerStatus:
        return TrainerStatus(**stamp(state), step=self.step, tokens=self.tokens, saes=dict(self.latest),
                             streams=dict(self.streams), gone=sorted(self.m.counters.streams.gone))

    def close(self) -> None:
        self.log.close()


class SnapshotPublisher:
    """Publishes SAE snapshots (and 'end') to evaluators over a lossless XPUB."""

    def __init__(self, cfg: TrainerConfig, metrics: TrainerMetrics) -> None:
        # A busy evaluator must not stall training: a snapshot waits at most 2 s, then is
        # dropped (counted); the next one supersedes it anyway.
        fast = dataclasses.replace(transport(cfg), send_timeout_ms=min(cfg.send_timeout_ms, 2000))
        self.pub = Publisher(cfg.snapshot_bind, None, fast, curve=curve(cfg, "server"))
        if self.pub.allow_list is not None:
            self.pub.allow_list.on_denied = self.pub.on_handshake_failed = metrics.auth_denied.inc
        self.m, self.epoch, self.seq = metrics, new_epoch(), 0
        self.name = sender_name(cfg.snapshot_bind)  # meta 'src': evaluators tell the shards apart
        self.end_confirmed = False
        self.source = {"game": "", "model": "", "layer": 0}  # the stream's, from its first batch

    def set_source(self, batch: ActivationBatch) -> None:
        self.source = {"game": batch.game, "model": batch.model, "layer": batch.layer}

    def _frames(self, kind: str, tensors: dict, meta: dict, advance: bool = True) -> list:
        """A message of this sender; advance: it takes the next seq (a heartbeat takes none)."""
        frames = encode(kind, epoch=self.epoch, seq=self.seq, tensors=tensors, meta={**meta, "src": self.name},
                        **self.source)
        self.seq += advance
        return frames

    def _snapshot_frames(self, tr) -> list:
        """One SAE's snapshot message, built by the wire schema (boardlens.protocol.snapshot)."""
        snap = SaeSnapshot(name=tr.name, step=tr.step, arch=tr.ae.arch, tensors=sae_tensors(tr.export_ae()),
                           hyperparams=tr.hyperparams(), epoch=self.epoch, seq=self.seq, meta={"src": self.name},
                           **self.source)
        frames = encode_snapshot(snap)
        self.seq += 1
        return frames

    def __call__(self, sweep: SweepTrainer) -> None:
        for tr in sweep.trainers:
            try:
                self.pub.send(self._snapshot_frames(tr))
                ok = True
            except SendTimeout:
                ok = False
            self.m.snapshots.labels("sent" if ok else "dropped").inc()

    def keep_alive(self, every_s: float) -> None:
        """A heartbeat to the evaluators when nothing was sent for every_s (between snapshots)."""
        keep_alive(self.pub, every_s, lambda: self._frames("heartbeat", {}, {}, advance=False))

    def end(self, step: int, timeout_s: float, should_stop) -> None:
        """Send 'end' and wait (up to timeout_s) until the evaluators confirm reading it."""
        seq = self.seq
        r = self.pub.finish(self._frames("end", {}, {"step": step}), self.epoch, seq, timeout_s, should_stop)
        self.end_confirmed = r.complete
        if r.complete:
            log.info("trainer: end confirmed by %s", ", ".join(r.confirmed) or "nobody (no evaluator)")
        else:
            log.warning("trainer: end not confirmed by %s%s", ", ".join(r.unconfirmed) or "-",
                        f" and {r.anonymous} unnamed subscriber(s)" if r.anonymous else "")

    def close(self, drain_s: float = 30.0) -> None:
        """Close; unless every evaluator confirmed the end, let queued snapshots leave (bounded)."""
        self.pub.close(linger_ms=0 if self.end_confirmed else int(drain_s * 1000))


def finish(sweep: SweepTrainer | None, snap: SnapshotPublisher, stop: threading.Event) -> None:
    """Final checkpoint; unless stopping, last snapshots and end to the evaluators."""
    if sweep is None:
        return
    sweep.checkpoint()
    if not stop.is_set():
        snap(sweep)
        snap.end(sweep.step, 30.0, stop.is_set)
    sweep.close()
    log.info("trainer: stopped at step %d", sweep.step)


class _Inbox:
    """Where run() delivers messages: the sweep, built on the first batch (which tells the
    width) or at once when resuming, and whether the stream has ended (`stream_ended()`: every
    producer has sent its end)."""

    def __init__(self, make_sweep, snap: SnapshotPublisher, stream_ended=lambda: True) -> None:
        self.make_sweep, self.snap, self.stream_ended = make_sweep, snap, stream_ended
        self.sweep: SweepTrainer | None = None
        self.ended = False

    def start(self, d_in: int) -> None:
        self.sweep = self.make_sweep(d_in)
        log.info("trainer: %d SAEs on d=%d: %s", len(self.sweep.trainers), d_in,
                 ", ".join(t.name for t in self.sweep.trainers))

    def on_message(self, kind: str, payload) -> None:
        if kind == "end":  # receive() has confirmed it: that producer may exit now
            self.ended = self.stream_ended()
        elif kind == "batch":
            if self.sweep is None:
                self.start(payload.acts.shape[-1])
            self.snap.set_source(payload)
            self.sweep.on_batch(payload)

    def status(self, text: str) -> TrainerStatus:
        return self.sweep.status(text) if self.sweep is not None else TrainerStatus(**stamp(text))


def run(cfg: TrainerConfig) -> int:
    """Train until `steps`, end of stream or SIGTERM; returns the exit status (module docstring)."""
    log_config("trainer", cfg)
    set_threads(cfg.threads)
    tune_malloc()  # keep freed message buffers: measured -70..150 us CPU per 1 MiB message
    stop = stop_on_signals()
    hard_exit_after_grace(stop, cfg.stop_grace_s)
    prepare_run_dir("trainer", cfg, cfg.shard_dir)
    device = pick_device(cfg.device)
    point = find_resume_point(cfg)
    tel = Telemetry("trainer", cfg.metrics_port, cfg.metrics_host, stall_after_s=cfg.health_stall_s)
    m = TrainerMetrics(tel)
    snap = SnapshotPublisher(cfg, m)
    sub = Subscriber(endpoints(cfg.connect), lossy=False, cfg=transport(cfg), curve=curve(cfg, "client"))
    streams = m.counters.streams
    inbox = _Inbox(lambda d_in: SweepTrainer(cfg, d_in, m, device, snap, stop.is_set, point), snap,
                   lambda: streams.finished(len(sub.connected)))
    keep_status(tel, cfg.shard_dir, inbox.status)
    try:
        if point is not None:  # resuming: the checkpoint tells the width, so build the sweep now
            inbox.start(point.sweep["buffer"]["d"])
        while not stop.is_set():
            sweep = inbox.sweep
            if sweep is not None and sweep.done:
                break
            if inbox.ended:
                if sweep is not None:
                    sweep.pump()
                    sweep.train_ready(drain=True)
                break
            if receive(sub, m.counters, 500, inbox.on_message):
                tel.progress()
            elif sweep is None:
                tel.idle("waiting for the producer")
            snap.keep_alive(cfg.idle_heartbeat_s)
            if m.counters.expire(sub, cfg.sender_timeout_s):
                inbox.ended = inbox.stream_ended()
        if inbox.ended and not streams.complete:
            log.error("trainer: stream incomplete: producer(s) %s gone; training on what was received",
                      ", ".join(sorted(streams.gone)))
            tel.idle("stream incomplete: producer(s) gone")
        finish(inbox.sweep, snap, stop)
        if inbox.sweep is not None and inbox.sweep.done:
            return 0
        if inbox.ended:
            return 0 if streams.complete else EXIT_INCOMPLETE
        return EXIT_STOPPED
    finally:
        sub.close()
        snap.close(drain_s=1.0 if stop.is_set() else 30.0)  # stopping: stay inside the grace period
        close_context()  # waits for the snapshot socket's queue (bounded linger)
        tel.close()

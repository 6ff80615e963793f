"""Evaluator: live supervised + unsupervised metrics of every SAE snapshot.

    boardlens evaluate --train-games 200 --test-games 200

It builds its evaluation set from the producer's lossy endpoint (it never slows the
producer; batches it misses are simply other games), splitting games by a hash of their id,
then closes that subscription. It keeps only the newest snapshot of each SAE (older queued
ones are skipped, never evaluated late) and evaluates it: coverage and board reconstruction
per family, L0, variance explained and friends. Once the eval set is complete it also scores
the references (`boardlens.metrics.references`: linear-probe ceiling, MLP neurons, random
SAE, SAE on the random-init model) on the same games with the same code. Results go to
gauges and one JSON line per evaluation or reference in `<run>/metrics.jsonl`; on the
trainer's 'end' it evaluates what is pending, writes `<run>/final_metrics.json`
(`{"saes": {name: record}, "references": {name: record}}`) and exits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from boardlens.atomic import write_json
from boardlens.lm.checkpoint import CheckpointError
from boardlens.lm.formats import load_any
from boardlens.metrics.evalset import EvalSet, evaluate_sae
from boardlens.metrics.loss_recovered import LossBaseline, LossRecovered
from boardlens.metrics.references import Reference, ReferenceSuite, floor_saes
from boardlens.protocol import ActivationBatch, Message, ProtocolError, Subscriber, decode_snapshot
from boardlens.registry import GAMES
from boardlens.sae.io import ae_from_tensors
from boardlens.services import metrics
from boardlens.services.common import (
    BadSnapshot,
    IncompatibleBatch,
    MessageCounters,
    StartupError,
    curve,
    keep_status,
    log,
    log_config,
    prepare_run_dir,
    receive,
    set_threads,
    stop_on_signals,
    transport,
)
from boardlens.services.config import EvaluatorConfig
from boardlens.services.status import EvaluatorStatus, SaeEvaluation, stamp
from boardlens.services.telemetry import Telemetry


class Snapshot(NamedTuple):
    name: str
    step: int
    ae: torch.nn.Module


class EvaluatorMetrics:
    def __init__(self, tel: Telemetry) -> None:
        self.counters = MessageCounters(tel, metrics.EVALUATOR_DATA)
        self.snapshot_counters = MessageCounters(tel, metrics.EVALUATOR_SNAPSHOTS)
        self.coverage = tel.metric(metrics.EVALUATOR_COVERAGE)
        self.reconstruction = tel.metric(metrics.EVALUATOR_RECONSTRUCTION)
        self.l0 = tel.metric(metrics.EVALUATOR_L0)
        self.fve = tel.metric(metrics.EVALUATOR_VARIANCE_EXPLAINED)
        self.dead = tel.metric(metrics.EVALUATOR_DEAD_LATENTS)
        self.loss_recovered = tel.metric(metrics.EVALUATOR_LOSS_RECOVERED)
        self.kl = tel.metric(metrics.EVALUATOR_KL)
        self.step = tel.metric(metrics.EVALUATOR_SNAPSHOT_STEP)
        self.duration = tel.metric(metrics.EVALUATOR_EVALUATION)
        self.evaluations = tel.metric(metrics.EVALUATOR_EVALUATIONS)
        self.skipped = tel.metric(metrics.EVALUATOR_SNAPSHOTS_SKIPPED)
        self.games = tel.metric(metrics.EVALUATOR_EVAL_SET_GAMES)
        self.ref_coverage = tel.metric(metrics.EVALUATOR_REFERENCE_COVERAGE)
        self.ref_reconstruction = tel.metric(metrics.EVALUATOR_REFERENCE_RECONSTRUCTION)


class LiveEvaluator:
    """The consumer: `on_batch` fills the eval set, `on_snapshot` queues, `evaluate_pending` scores."""

    def __init__(self, cfg: EvaluatorConfig, metrics: EvaluatorMetrics, model=None) -> None:
        """model: the producer's LM (for the MLP-neuron and floor references), or None."""
        self.cfg, self.m, self.model = cfg, metrics, model
        self.evalset: EvalSet | None = None
        self.game = ""
        self.pending: dict[str, Snapshot] = {}
        self.latest: dict[str, dict] = {}
        self.evaluations = 0  # snapshots evaluated, all SAEs
        self.trainer_ended = False  # the trainer sent its end of stream
        self.loss_base: LossBaseline | None = None  # clean / zero-ablated passes over the test games
        self.loss_base_games = 0
        self.references: dict[str, dict] = {}
        self.suite: ReferenceSuite | None = None
        self.layer = 0
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.run_dir / "metrics.jsonl", "a")

    def on_batch(self, batch: ActivationBatch) -> None:
        if self.evalset is None:
            try:
                fams = GAMES[batch.game].families()
            except ValueError as e:
                raise IncompatibleBatch(str(e)) from e
            self.evalset = EvalSet(fams, self.cfg.train_games, self.cfg.test_games)
            self.game, self.layer = batch.game, batch.layer
        if self.evalset.full:
            return
        if batch.game != self.game or not set(self.evalset.families) <= set(batch.labels):
            raise IncompatibleBatch(f"batch of game {batch.game!r} with labels {sorted(batch.labels)} "
                                    f"does not match the eval set ({self.game}, {sorted(self.evalset.families)})")
        try:
            self.evalset.add(batch.acts, batch.tokens, batch.game_ids, batch.lengths, batch.label_pos, batch.labels)
        except ValueError as e:
            raise IncompatibleBatch(str(e)) from e
        for split, n in self.evalset.progress().items():
            self.m.games.labels(split).set(n)

    def on_trainer_message(self, kind: str, payload) -> None:
        """A message of the trainer's snapshot channel: a snapshot, or its end of stream."""
        if kind == "snapshot":
            self.on_snapshot(payload)
        elif kind == "end":
            self.trainer_ended = True

    def on_snapshot(self, msg: Message) -> None:
        """Check the snapshot and keep it as the newest of its SAE (BadSnapshot if unusable)."""
        try:  # the wire schema (name, step, arch, bounded finite tensors): protocol/snapshot.py
            snap = decode_snapshot(msg)
        except ProtocolError as e:  # reason snapshot_schema, counted under BadSnapshot's label
            raise BadSnapshot(str(e)) from e
        name, step = snap.name, snap.step
        try:  # the arch's own tensor names and shapes; copies the tensors out of zmq's frames
            ae = ae_from_tensors(snap.tensors, snap.arch)
        except ValueError as e:
            raise BadSnapshot(f"snapshot {name}: {e}") from e
        if name in self.pending:
            self.m.skipped.inc()
        self.pending[name] = Snapshot(name, step, ae)

    @property
    def ready(self) -> bool:
        return self.evalset is not None and self.evalset.full

    def evaluate_pending(self, partial: bool = False) -> int:
        """Evaluate the newest snapshot of each SAE; partial: even on an unfilled eval set."""
        es = self.evalset
        if es is None or not (es.full or (partial and all(es.progress().values()))):
            return 0
        self.score_references()
        done = 0
        while self.pending:
            _, snap = self.pending.popitem()
            self.evaluate(snap)
            done += 1
        return done

    def evaluate(self, snap: Snapshot) -> dict:
        t0 = time.perf_counter()
        name, step, ae = snap
        if ae.d_in != self.evalset.width:  # the one width check (a snapshot may precede the eval set)
            log.warning("snapshot %s skipped: SAE input width %d, the stream's %d", name, ae.d_in,
                        self.evalset.width)
            self.m.snapshot_counters.rejected.labels(BadSnapshot.reason).inc()
            return {}
        scores, stats = evaluate_sae(ae, self.evalset)
        loss = self._loss_recovered(ae)
        dt = time.perf_counter() - t0
        averages = self._averages(scores)
        self._set_scores(self.m.coverage, self.m.reconstruction, name, scores, averages)
        self.m.l0.labels(name).set(stats.l0)
        self.m.fve.labels(name).set(stats.var_explained)
        self.m.dead.labels(name).set(1.0 - stats.frac_alive)
        self.m.step.labels(name).set(step)
        if loss is not None:
            self.m.loss_recovered.labels(name).set(loss.recovered)
            self.m.kl.labels(name).set(loss.kl)
        self.m.duration.observe(dt)
        self.m.evaluations.labels(name).inc()
        self.evaluations += 1
        record = {"time": time.time(), "sae": name, "step": step, "eval_seconds": round(dt, 3),
                  "games": self.evalset.progress(),
                  "families": {k: v._asdict() for k, v in scores.items()}, "averages": averages,
                  **stats._asdict(), **({"loss": loss._asdict()} if loss is not None else {})}
        self.latest[name] = record
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()
        if self.suite is not None:  # a random SAE of this size, scored once
            self._record_reference(self.suite.random_sae(ae.d_in, ae.d_sae))
        shown = {**{k: v._asdict() for k, v in scores.items()}, **averages}
        if len(scores) > 4:  # chess: the first (piece) family and the averages; all in metrics.jsonl
            shown = {k: shown[k] for k in (next(iter(scores)), *averages)}
        log.info("evaluated %s step %d in %.1f s: %s; L0 %.1f, FVE %.3f%s", name, step, dt,
                 ", ".join(f"{k} cov {v['coverage']:.3f} rec {v['reconstruction']:.3f}" for k, v in shown.items()),
                 stats.l0, stats.var_explained, "" if loss is None else f", loss recovered {loss.recovered:.3f}")
        return record

    def _loss_recovered(self, ae) -> LossRecovered | None:
        """Loss recovered on the test split's games (needs the producer's model: --model)."""
        if self.model is None:
            return None
        games = self.evalset.games("test")
        if self.loss_base is None or self.loss_base_games != len(games):  # a partial set may grow
            if not self._model_matches_stream(games[0]):
                self.model = None  # every figure it gave would be wrong
                return None
            self.loss_base = LossBaseline(self.model, self.layer, games)
            self.loss_base_games = len(games)
        return self.loss_base.score(ae.float().eval())

    @torch.no_grad()
    def _model_matches_stream(self, game: tuple[torch.Tensor, torch.Tensor]) -> bool:
        """Does --model give the streamed activations for a game's tokens (within bf16 noise)?"""
        tokens, acts = game
        _, resid = self.model(tokens[None], resid_layers=(self.layer,), stop_after=self.layer)
        err = float((resid[self.layer][0].float() - acts).norm() / acts.norm().clamp_min(1e-12))
        if err > 0.05:
            log.warning("evaluator --model %s does not produce the streamed activations of layer %d "
                        "(relative error %.3f): loss recovered and the model-based references are off",
                        self.cfg.model, self.layer, err)
            return False
        return True

    def _averages(self, scores: dict) -> dict[str, dict[str, float]]:
        return {group: {"coverage": float(np.mean([scores[f].coverage for f in members])),
                        "reconstruction": float(np.mean([scores[f].reconstruction for f in members]))}
                for group, members in GAMES[self.game].family_groups().items()}

    @staticmethod
    def _set_scores(cov_gauge, rec_gauge, name: str, scores: dict, averages: dict) -> None:
        for fam, s in scores.items():
            cov_gauge.labels(name, fam).set(s.coverage)
            rec_gauge.labels(name, fam).set(s.reconstruction)
        for group, v in averages.items():  # same gauges; 'family' names the group
            cov_gauge.labels(name, group).set(v["coverage"])
            rec_gauge.labels(name, group).set(v["reconstruction"])

    def score_references(self) -> None:
        """Once per eval set: the fixed references (probe, MLP neurons, random-init SAE)."""
        if self.suite is not None or not self.cfg.references:
            return
        floor = []
        if self.model is not None:
            try:
                floor = [(p, m) for p, m in floor_saes(self.cfg.model) if int(m["layer"]) == self.layer]
            except ValueError as e:
                log.warning("random_init_sae reference skipped: %s", e)
        self.suite = ReferenceSuite(self.evalset, self.model, self.layer, floor,
                                    lambda path: load_any(path)[0].eval(), self.cfg.model or None)
        t0 = time.perf_counter()
        for name, compute in self.suite.fixed():
            try:
                self._record_reference(compute())
            except (OSError, ValueError, KeyError, CheckpointError) as e:  # a bad file costs one row
                log.warning("%s reference skipped: %s", name, e)
        log.info("references scored in %.1f s: %s", time.perf_counter() - t0, ", ".join(
            f"{n} rec {r['averages']['average']['reconstruction']:.3f}" for n, r in self.references.items()))

    def _record_reference(self, ref: Reference) -> None:
        if ref.name in self.references and self.references[ref.name]["detail"] == ref.detail:
            return
        averages = self._averages(ref.scores)
        self._set_scores(self.m.ref_coverage, self.m.ref_reconstruction, ref.name, ref.scores, averages)
        record = {"time": time.time(), "reference": ref.name, "detail": ref.detail,
                  "games": self.evalset.progress(),
                  "families": {k: v._asdict() for k, v in ref.scores.items()}, "averages": averages,
                  **(ref.stats._asdict() if ref.stats is not None else {})}
        self.references[ref.name] = record
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()

    def status(self, state: str) -> EvaluatorStatus:
        mean = "average"  # the group every game has: all its families
        return EvaluatorStatus(
            **stamp(state), games=self.evalset.progress() if self.evalset is not None else {},
            evaluations=self.evaluations,
            saes={n: SaeEvaluation(r["step"], r["averages"][mean]["coverage"], r["averages"][mean]["reconstruction"])
                  for n, r in self.latest.items()},
            references={n: r["averages"][mean]["reconstruction"] for n, r in self.references.items()})

    def close(self) -> None:
        final = {"saes": self.latest, "references": self.references}
        write_json(self.run_dir / "final_metrics.json", final)
        self.log.close()


def run(cfg: EvaluatorConfig) -> int:
    """Evaluate until the trainer's 'end' or SIGTERM; returns the number of evaluations."""
    log_config("evaluator", cfg)
    set_threads(cfg.threads)
    stop = stop_on_signals()
    prepare_run_dir("evaluator", cfg)
    model = None
    if cfg.model:  # loss recovered and model references; load now: a bad path fails at start, not after the eval set
        try:
            model = load_any(cfg.model)[0].eval()
        except ValueError as e:
            raise StartupError(f"evaluator --model: {e}") from e
    tel = Telemetry("evaluator", cfg.metrics_port, cfg.metrics_host, stall_after_s=cfg.health_stall_s)
    m = EvaluatorMetrics(tel)
    ev = LiveEvaluator(cfg, m, model)
    keep_status(tel, cfg.run_dir, ev.status)
    keys = curve(cfg, "client")
    data: Subscriber | None = Subscriber(cfg.connect, lossy=True, cfg=transport(cfg), curve=keys)
    snaps = Subscriber(cfg.snapshots, lossy=False, cfg=transport(cfg), curve=keys)

    def on_data(kind: str, payload) -> None:
        if kind == "batch":
            ev.on_batch(payload)

    try:
        while not stop.is_set():
            if data is not None:
                got = receive(data, m.counters, 0 if ev.pending else 100, on_data)
                if ev.ready:  # eval set complete: stop taking data from the producer
                    data.close()
                    data = None
                    log.info("evaluator: eval set complete %s", ev.evalset.progress())
                if got:
                    tel.progress()
            # Drain every queued snapshot first so only the newest of each SAE is evaluated.
            while receive(snaps, m.snapshot_counters, 0 if (ev.pending or data is not None) else 200,
                          ev.on_trainer_message):
                tel.progress()
            if ev.trainer_ended:
                ev.evaluate_pending(partial=True)
                break
            if ev.evaluate_pending():
                tel.progress()
            elif data is None:
                tel.idle("waiting for snapshots")
        return ev.evaluations
    finally:
        ev.close()
        if data is not None:
            data.close()
        snaps.close()
        tel.close()
        log.info("evaluator: stopped after %d evaluations", ev.evaluations)

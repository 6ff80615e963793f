"""Evaluator: live supervised + unsupervised metrics of every SAE snapshot.

    boardlens evaluate --train-games 1000 --test-games 1000

It builds its evaluation set from the producer's lossy endpoint (it never slows the
producer; batches it misses are simply other games), splitting games by a hash of their id,
then closes that subscription. It keeps only the newest snapshot of each SAE (older queued
ones are skipped, never evaluated late) and evaluates it through `boardlens.metrics.scorer`:
coverage and every board-reconstruction variant per family, L0, variance explained and
friends, and, given the producer's model (--model), loss recovered and KL. Once the eval set is complete it also scores
the references (`boardlens.metrics.references`: linear-probe ceiling, MLP neurons, random
SAE, SAE on the random-init model) on the same games with the same code. At a slower cadence
(--describe-every) it describes every latent of a snapshot by its best BSP and scores it
FADE-style (`boardlens.interpret`), with the MLP neurons and a random SAE as references. Results go to
gauges and one JSON line per evaluation or reference in `<run>/metrics.jsonl`; on the
trainer's 'end' it evaluates what is pending, writes `<run>/final_metrics.json`
(`{"saes": {name: record}, "references": {name: record}}`) and exits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

import torch

from boardlens.atomic import write_json
from boardlens.lm.formats import load_any
from boardlens.metrics.evalset import EvalSet
from boardlens.metrics.scorer import Scorer
from boardlens.protocol import ActivationBatch, Message, ProtocolError, Subscriber, decode_snapshot
from boardlens.registry import GAMES
from boardlens.sae.io import ae_from_tensors
from boardlens.services import metrics
from boardlens.services.common import (
    EXIT_INCOMPLETE,
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
from boardlens.services.config import EvaluatorConfig, endpoints
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
        self.latent_score = tel.metric(metrics.EVALUATOR_LATENT_SCORE)
        self.latent_share = tel.metric(metrics.EVALUATOR_LATENT_SHARE)
        self.ref_latent_score = tel.metric(metrics.EVALUATOR_REFERENCE_LATENT_SCORE)
        self.describe_seconds = tel.metric(metrics.EVALUATOR_DESCRIBE)
        self.describe_failures = tel.metric(metrics.EVALUATOR_DESCRIBE_FAILURES)


class LiveEvaluator:
    """The consumer: `on_batch` fills the eval set, `on_snapshot` queues, `evaluate_pending` scores."""

    def __init__(self, cfg: EvaluatorConfig, metrics: EvaluatorMetrics, model=None,
                 trainers_ended=lambda: True) -> None:
        """model: the producer's LM (for the MLP-neuron and floor references), or None.
        trainers_ended(): whether every trainer (shard) sending snapshots has sent its end."""
        self.cfg, self.m, self.model, self.trainers_ended = cfg, metrics, model, trainers_ended
        self.evalset: EvalSet | None = None
        self.game = ""
        self.pending: dict[str, Snapshot] = {}
        self.latest: dict[str, dict] = {}
        self.evaluations = 0  # snapshots evaluated, all SAEs
        self.trainer_ended = False  # every trainer (shard) has sent its end of stream
        self.references: dict[str, dict] = {}
        self.descriptions: dict[str, dict] = {}  # per SAE: step, summary, top latents of the newest description
        self.description_refs: dict[str, dict] = {}  # per reference: summary
        self.evaluated: dict[str, int] = {}  # evaluations per SAE (the describe cadence)
        self.undescribed: dict[str, Snapshot] = {}  # SAE -> its last evaluated snapshot, if not described
        self.describe_errors: set[str] = set()  # kinds of description failure logged with a traceback
        self.scorer: Scorer | None = None  # made with the eval set
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
            self.scorer = Scorer(self.evalset, self.game, self.layer, self.model, self.cfg.model or None,
                                 lambda path: load_any(path)[0].eval())
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
            self.trainer_ended = self.trainers_ended()

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
        name, step, ae = snap
        try:
            record = self.scorer.score(name, step, ae)
        except ValueError as e:  # the one width check (a snapshot may precede the eval set)
            log.warning("snapshot skipped: %s", e)
            self.m.snapshot_counters.rejected.labels(BadSnapshot.reason).inc()
            return {}
        self._set_scores(self.m.coverage, self.m.reconstruction, name, record)
        self.m.l0.labels(name).set(record["l0"])
        self.m.fve.labels(name).set(record["var_explained"])
        self.m.dead.labels(name).set(1.0 - record["frac_alive"])
        self.m.step.labels(name).set(step)
        if "loss" in record:
            self.m.loss_recovered.labels(name).set(record["loss"]["recovered"])
            self.m.kl.labels(name).set(record["loss"]["kl"])
        self.m.duration.observe(record["eval_seconds"])
        self.m.evaluations.labels(name).inc()
        self.evaluations += 1
        self.latest[name] = record
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()
        if self.cfg.references:  # a random SAE of this size, scored once
            self._record_reference(self.scorer.random_sae_reference(ae.d_in, ae.d_sae))
        self._log_evaluation(record)
        n = self.evaluated[name] = self.evaluated.get(name, 0) + 1
        every = self.cfg.describe_every
        if every and ((n - 1) % every == 0 or self.trainer_ended):
            self._describe(snap)
        elif every:  # described at the end if it stays the last (its 'end' may come after it)
            self.undescribed[name] = snap
        return record

    def _describe(self, snap: Snapshot) -> None:
        self.undescribed.pop(snap.name, None)
        try:
            self.describe(snap)
        except Exception as e:  # noqa: BLE001 - counted and logged; it never costs the run its evaluations
            self._describe_failed(snap.name, snap.step, e)

    def describe_last(self) -> None:
        """At the end: describe each SAE's last evaluated snapshot if it was not (it was evaluated
        before the trainer's 'end' was read)."""
        for snap in list(self.undescribed.values()):
            self._describe(snap)

    def _describe_failed(self, name: str, step: int, e: Exception) -> None:
        """Count every failure (boardlens_evaluator_describe_failures_total, alerted on when it
        repeats); log the traceback the first time each kind of failure is seen, one line after."""
        self.m.describe_failures.inc()
        kind = f"{type(e).__name__}: {e}"
        if kind in self.describe_errors:
            log.error("describing %s step %d failed again: %s", name, step, kind)
        else:
            self.describe_errors.add(kind)
            log.error("describing %s step %d failed", name, step, exc_info=e)

    def describe(self, snap: Snapshot) -> dict:
        """Every latent's best BSP and FADE scores (`boardlens.interpret`): the full record to
        <run>/descriptions/<sae>.json, the per-family summary to gauges and metrics.jsonl."""
        from boardlens.interpret.report import interpret, sae_subject, top_latents

        faithful = self.cfg.describe_faithful_latents if self.model is not None else 0
        rec = interpret(sae_subject(snap.name, snap.ae, self.evalset, self.layer), self.evalset, self.model,
                        self.game, faithful)
        rec["step"] = snap.step
        (self.run_dir / "descriptions").mkdir(exist_ok=True)
        write_json(self.run_dir / "descriptions" / f"{snap.name}.json", rec)
        self._set_latent_scores(self.m.latent_score, snap.name, rec["summary"], self.m.latent_share)
        self.m.describe_seconds.observe(rec["seconds"]["total"])
        line = {"time": time.time(), "describe": snap.name, "step": snap.step, "summary": rec["summary"],
                "faithfulness": rec["faithfulness"], "seconds": rec["seconds"]}
        self.descriptions[snap.name] = {**line, "top": top_latents(rec)}
        self.log.write(json.dumps(line) + "\n")
        self.log.flush()
        a = rec["summary"].get("all", {})
        log.info("described %s step %d in %.1f s: %d latents, clarity %s, responsiveness %s, purity %s", snap.name,
                 snap.step, rec["seconds"]["total"], rec["described"], a.get("clarity"), a.get("responsiveness"),
                 a.get("purity"))
        if self.cfg.references:
            self._describe_references(snap.ae.d_sae)
        return rec

    def _describe_references(self, d_sae: int) -> None:
        """Once per eval set: the MLP neurons (with a model) and a random SAE of this size."""
        from boardlens.interpret.report import interpret, mlp_subject, random_subject

        wanted = [(f"random_sae-{d_sae}", lambda: random_subject(self.evalset, self.layer, d_sae))]
        if self.model is not None:
            wanted.append(("mlp_neurons", lambda: mlp_subject(self.model, self.evalset, self.layer)))
        for name, make in wanted:
            if name in self.description_refs:
                continue
            rec = interpret(make(), self.evalset, None, self.game, 0)
            self._set_latent_scores(self.m.ref_latent_score, name, rec["summary"])
            line = {"time": time.time(), "describe_reference": name, "summary": rec["summary"],
                    "seconds": rec["seconds"]}
            self.description_refs[name] = line
            self.log.write(json.dumps(line) + "\n")
            self.log.flush()

    @staticmethod
    def _set_latent_scores(gauge, name: str, summary: dict, share_gauge=None) -> None:
        for fam, s in summary.items():
            for score in ("clarity", "responsiveness", "purity", "faithfulness"):
                if s.get(score) is not None:
                    gauge.labels(name, fam, score).set(s[score])
                share = s.get(f"{score}_ge_0.5")
                if share_gauge is not None and share is not None:
                    share_gauge.labels(name, fam, score).set(share)

    @staticmethod
    def _log_evaluation(r: dict) -> None:
        shown = {**r["families"], **r["averages"]}
        if len(r["families"]) > 4:  # chess: the first (piece) family and the averages; all in metrics.jsonl
            shown = {k: shown[k] for k in (next(iter(r["families"])), *r["averages"])}
        loss = f", loss recovered {r['loss']['recovered']:.3f}" if "loss" in r else ""
        log.info("evaluated %s step %d in %.1f s: %s; L0 %.1f, FVE %.3f%s", r["sae"], r["step"], r["eval_seconds"],
                 ", ".join(f"{k} cov {v['coverage']:.3f} rec {v['reconstruction']:.3f}" for k, v in shown.items()),
                 r["l0"], r["var_explained"], loss)

    @staticmethod
    def _set_scores(cov_gauge, rec_gauge, name: str, record: dict) -> None:
        """Per family and per group average ('family' names the group) of a record."""
        for fam, v in {**record["families"], **record["averages"]}.items():
            cov_gauge.labels(name, fam).set(v["coverage"])
            rec_gauge.labels(name, fam).set(v["reconstruction"])

    def score_references(self) -> None:
        """Once per eval set: the fixed references (probe, MLP neurons, random-init SAE)."""
        if not self.cfg.references:
            return
        t0 = time.perf_counter()
        records = self.scorer.fixed_references()
        for record in records:
            self._record_reference(record)
        if records:
            log.info("references scored in %.1f s: %s", time.perf_counter() - t0, ", ".join(
                f"{n} rec {r['averages']['average']['reconstruction']:.3f}" for n, r in self.references.items()))

    def _record_reference(self, record: dict) -> None:
        name = record["reference"]
        if name in self.references and self.references[name]["detail"] == record["detail"]:
            return
        self._set_scores(self.m.ref_coverage, self.m.ref_reconstruction, name, record)
        self.references[name] = record
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()

    def status(self, state: str) -> EvaluatorStatus:
        mean = "average"  # the group every game has: all its families
        return EvaluatorStatus(
            **stamp(state), games=self.evalset.progress() if self.evalset is not None else {},
            evaluations=self.evaluations,
            saes={n: SaeEvaluation(r["step"], r["averages"][mean]["coverage"], r["averages"][mean]["reconstruction"])
                  for n, r in self.latest.items()},
            references={n: r["averages"][mean]["reconstruction"] for n, r in self.references.items()},
            gone=sorted(self.m.snapshot_counters.streams.gone))

    def close(self) -> None:
        final = {"saes": self.latest, "references": self.references}
        if self.descriptions or self.description_refs:
            final["descriptions"] = {"saes": self.descriptions, "references": self.description_refs}
        write_json(self.run_dir / "final_metrics.json", final)
        self.log.close()


def run(cfg: EvaluatorConfig) -> int:
    """Evaluate until every trainer shard has ended (or gone) or SIGTERM; -> the exit status: 0,
    or EXIT_INCOMPLETE when a shard was declared gone (sender_timeout_s) before its end."""
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
    keys = curve(cfg, "client")
    data: Subscriber | None = Subscriber(endpoints(cfg.connect), lossy=True, cfg=transport(cfg), curve=keys)
    snaps = Subscriber(endpoints(cfg.snapshots), lossy=False, cfg=transport(cfg), curve=keys)
    shards = m.snapshot_counters.streams  # one sender per trainer shard
    ev = LiveEvaluator(cfg, m, model, lambda: shards.finished(len(snaps.connected)))
    keep_status(tel, cfg.run_dir, ev.status)

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
            if m.snapshot_counters.expire(snaps, cfg.sender_timeout_s):
                ev.trainer_ended = ev.trainers_ended()
            if data is not None:
                m.counters.expire(data, cfg.sender_timeout_s)  # counted; the eval set fills from the others
            if ev.trainer_ended:
                ev.evaluate_pending(partial=True)
                ev.describe_last()
                break
            if ev.evaluate_pending():
                tel.progress()
            elif data is None:
                tel.idle("waiting for snapshots")
        if ev.trainer_ended and not shards.complete:
            log.error("evaluator: incomplete: trainer shard(s) %s gone before their end; their SAEs stand at "
                      "their last evaluated snapshot", ", ".join(sorted(shards.gone)))
            return EXIT_INCOMPLETE
        return 0
    finally:
        ev.close()
        if data is not None:
            data.close()
        snaps.close()
        tel.close()
        log.info("evaluator: stopped after %d evaluations", ev.evaluations)

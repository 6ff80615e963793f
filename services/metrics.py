"""The catalogue of every Prometheus metric the services export: name, type, help, labels.

The services create their metrics only from these entries (`Telemetry.metric`), the dashboard
generator (deploy/grafana/generate.py) builds its queries from them, and the tests check that
every metric name in the dashboard, in deploy/prometheus/rules.yml and in rules_test.yml is
one of them. So a rename happens here, once, and a stale query fails a test instead of
drawing an empty panel.

Conventions (checked by tests/services/test_metrics_catalogue.py):
- one subsystem per service: `boardlens_producer_*`, `boardlens_trainer_*`,
  `boardlens_evaluator_*`; only `boardlens_build_info` (every service, `service` label) and
  prometheus_client's process collector (`process_*`) are shared;
- base units in names (`_seconds`, `_bytes`, `_ratio` for 0..1 fractions), `_total` on
  counters; latencies are histograms; a gauge in seconds holds one "now" or "last" value;
- one name per quantity per service: the trainer's L0 (training batches) and the
  evaluator's (held-out games) are two measurements, each under its own service; latents
  that never fire are counted as dead (never as alive) everywhere;
- nothing is called `up` or `*_up`: Prometheus' own `up` says whether a scrape worked.

This module is data only (no prometheus_client, torch or zmq): the dashboard generator and
the tests import it without starting anything.
"""

from __future__ import annotations

import re
from typing import NamedTuple

SERVICES = ("producer", "trainer", "evaluator")
COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
# Small cardinality only: never a sequence number, game id or step. `source` is a sender's
# name (a producer or trainer shard): a handful per run, and protocol.Streams bounds them.
LABELS = ("service", "version", "sae", "term", "family", "split", "reference", "reason", "mode",
          "outcome", "score", "source")

_LATENCY_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_STEP_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_EVAL_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)


class Metric(NamedTuple):
    name: str
    """Full name as PromQL selects it; counters include `_total`, histograms are the base name."""
    kind: str
    """counter, gauge or histogram."""
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    """Histogram bucket bounds (seconds)."""
    shared: bool = False
    """Exported by every service (else by the service its name's subsystem names)."""

    @property
    def service(self) -> str:
        """The exporting service, or '' for a shared metric."""
        return "" if self.shared else self.name.split("_")[1]

    def series(self) -> tuple[str, ...]:
        """Sample names as exposed by prometheus_client (what PromQL can select)."""
        if self.kind == HISTOGRAM:
            return tuple(self.name + s for s in ("_bucket", "_sum", "_count"))
        return (self.name,)


class Channel(NamedTuple):
    """The counters of one received message stream (services.common.MessageCounters)."""

    received: Metric
    rejected: Metric
    lost: Metric
    gone: Metric
    bytes: Metric


def _channel(prefix: str, what: str, lost_unit: str, senders: str) -> Channel:
    return Channel(
        Metric(f"{prefix}_messages_total", COUNTER, f"{what} messages received and decoded"),
        Metric(f"{prefix}_messages_rejected_total", COUNTER,
               f"{what} messages rejected by the protocol decoder or the handler", ("reason",)),
        Metric(f"{prefix}_{lost_unit}_lost_total", COUNTER,
               f"{what} messages missing from the sender's sequence (epoch, seq), by sender "
               "(its name: a producer's --name, else host:port; '-' when unnamed)", ("source",)),
        Metric(f"{prefix}_{senders}_lost_total", COUNTER,
               f"{what} senders declared gone: silent, not even a heartbeat, for sender_timeout_s "
               "(by sender; the stream ends once every sender has ended or gone)", ("source",)),
        Metric(f"{prefix}_received_bytes_total", COUNTER, f"{what} bytes received"),
    )


# --- every service -----------------------------------------------------------------------
BUILD_INFO = Metric("boardlens_build_info", GAUGE, "1, labelled with the service and the BoardLens "
                    "version (absent: the service is not running or not scraped)",
                    ("service", "version"), shared=True)
# prometheus_client's ProcessCollector: not created by Telemetry.metric, listed so that
# queries and rules may name them.
PROCESS = (
    Metric("process_cpu_seconds_total", COUNTER, "Total user and system CPU time spent in seconds.",
           shared=True),
    Metric("process_resident_memory_bytes", GAUGE, "Resident memory size in bytes.", shared=True),
    Metric("process_virtual_memory_bytes", GAUGE, "Virtual memory size in bytes.", shared=True),
    Metric("process_start_time_seconds", GAUGE, "Start time of the process since unix epoch in seconds.",
           shared=True),
    Metric("process_open_fds", GAUGE, "Number of open file descriptors.", shared=True),
    Metric("process_max_fds", GAUGE, "Maximum number of open file descriptors.", shared=True),
)

# --- producer ----------------------------------------------------------------------------
PRODUCER_TOKENS = Metric("boardlens_producer_tokens_total", COUNTER, "Valid token positions streamed")
PRODUCER_BATCHES = Metric("boardlens_producer_batches_total", COUNTER, "Batches sent")
PRODUCER_BYTES = Metric("boardlens_producer_bytes_total", COUNTER, "Payload bytes sent (header + frames)")
PRODUCER_GAMES = Metric("boardlens_producer_games_total", COUNTER, "Games streamed")
PRODUCER_FORWARD = Metric("boardlens_producer_forward_seconds", HISTOGRAM, "LM forward time per batch",
                          buckets=_LATENCY_S)
PRODUCER_LABELLING = Metric(
    "boardlens_producer_labelling_seconds", HISTOGRAM,
    "Time waiting for the next labelled batch (generation + labelling not hidden by workers)",
    buckets=_LATENCY_S)
PRODUCER_SEND_BLOCKED = Metric("boardlens_producer_send_blocked_seconds", HISTOGRAM,
                               "Time a send spent blocked on slow lossless subscribers", buckets=_LATENCY_S)
PRODUCER_SEND_BLOCKED_NOW = Metric("boardlens_producer_send_blocked_now_seconds", GAUGE,
                                   "How long the send in progress has been blocked (0 when none)")
PRODUCER_SEND_TIMEOUTS = Metric("boardlens_producer_send_timeouts_total", COUNTER,
                                "Sends that timed out on a full lossless subscriber")
PRODUCER_SUBSCRIBERS = Metric("boardlens_producer_subscribers", GAUGE, "Connected subscribers", ("mode",))
PRODUCER_AUTH_DENIED = Metric("boardlens_producer_auth_denied_total", COUNTER,
                              "Connections refused: a client without CURVE, or with a key not on the allow-list")
PRODUCER_RESTARTS = Metric("boardlens_producer_stream_restarts", GAUGE,
                           "Times this stream was continued from its state file (kept across restarts)")

# --- trainer -----------------------------------------------------------------------------
TRAINER_DATA = _channel("boardlens_trainer", "Producer", "batches", "producers")
TRAINER_TOKENS = Metric("boardlens_trainer_tokens_total", COUNTER, "Activations received into the buffer")
TRAINER_STEPS = Metric("boardlens_trainer_steps_total", COUNTER, "Optimiser steps", ("sae",))
TRAINER_STEPS_SKIPPED = Metric("boardlens_trainer_steps_skipped_total", COUNTER,
                               "Steps skipped because the loss or a gradient was not finite", ("sae",))
TRAINER_TRAINED_TOKENS = Metric("boardlens_trainer_trained_tokens_total", COUNTER, "Activations trained on",
                                ("sae",))
TRAINER_STEP = Metric("boardlens_trainer_step_seconds", HISTOGRAM, "Wall time of one sweep step (all SAEs)",
                      buckets=_STEP_S)
TRAINER_UPDATE = Metric("boardlens_trainer_update_seconds", HISTOGRAM,
                        "Wall time of one SAE's optimiser update (its steps/s alone = count / sum)",
                        ("sae",), _STEP_S)
TRAINER_LOSS = Metric("boardlens_trainer_loss", GAUGE, "Latest loss terms on the training batch "
                      "(term: loss, recon, sparsity, aux)", ("sae", "term"))
TRAINER_L0 = Metric("boardlens_trainer_l0", GAUGE, "Mean active latents per activation (latest training batch)",
                    ("sae",))
TRAINER_VARIANCE_EXPLAINED = Metric("boardlens_trainer_variance_explained_ratio", GAUGE,
                                    "Fraction of variance explained (latest training batch)", ("sae",))
TRAINER_DEAD_LATENTS = Metric("boardlens_trainer_dead_latents_ratio", GAUGE,
                              "Fraction of latents silent for the dead window", ("sae",))
TRAINER_SPARSITY_P = Metric("boardlens_trainer_sparsity_p", GAUGE, "Current p of the sparsity penalty (1 = L1)",
                            ("sae",))
TRAINER_SPARSITY_ALPHA = Metric("boardlens_trainer_sparsity_alpha", GAUGE, "Current sparsity coefficient",
                                ("sae",))
TRAINER_BUFFER = Metric("boardlens_trainer_buffer_activations", GAUGE, "Unread activations in the shuffle buffer")
TRAINER_SNAPSHOTS = Metric("boardlens_trainer_snapshots_total", COUNTER, "Snapshots published", ("outcome",))
TRAINER_AUTH_DENIED = Metric("boardlens_trainer_auth_denied_total", COUNTER,
                             "Evaluator connections refused: no CURVE, or a key not on the allow-list")
# Checkpoints are minutes apart: a histogram's rate would be empty in most windows.
TRAINER_LAST_CHECKPOINT = Metric("boardlens_trainer_last_checkpoint_seconds", GAUGE,
                                 "Wall time of the latest checkpoint write")
TRAINER_LAST_CHECKPOINT_STEP = Metric("boardlens_trainer_last_checkpoint_step", GAUGE,
                                      "Sweep step of the latest complete checkpoint")

# --- evaluator ---------------------------------------------------------------------------
EVALUATOR_DATA = _channel("boardlens_evaluator", "Producer (lossy)", "batches", "producers")
EVALUATOR_SNAPSHOTS = _channel("boardlens_evaluator_snapshot", "Trainer snapshot", "messages", "trainers")
EVALUATOR_COVERAGE = Metric("boardlens_evaluator_coverage", GAUGE, "Coverage of the latest snapshot "
                            "(family: a family, or a group average)", ("sae", "family"))
EVALUATOR_RECONSTRUCTION = Metric("boardlens_evaluator_reconstruction", GAUGE,
                                  "Board reconstruction F1 of the latest snapshot", ("sae", "family"))
EVALUATOR_L0 = Metric("boardlens_evaluator_l0", GAUGE, "Mean active latents per position on the eval set",
                      ("sae",))
EVALUATOR_VARIANCE_EXPLAINED = Metric("boardlens_evaluator_variance_explained_ratio", GAUGE,
                                      "Fraction of variance explained on the eval set", ("sae",))
EVALUATOR_DEAD_LATENTS = Metric("boardlens_evaluator_dead_latents_ratio", GAUGE,
                                "Fraction of latents that never fire on the eval set", ("sae",))
EVALUATOR_LOSS_RECOVERED = Metric("boardlens_evaluator_loss_recovered_ratio", GAUGE,
                                  "Next-move loss recovered with the SAE in the residual: (CE_zero - CE_sae) / "
                                  "(CE_zero - CE_clean)", ("sae",))
EVALUATOR_KL = Metric("boardlens_evaluator_kl_divergence_nats", GAUGE,
                      "Mean KL(clean || with the SAE) of the next-move distribution", ("sae",))
EVALUATOR_SNAPSHOT_STEP = Metric("boardlens_evaluator_snapshot_step", GAUGE,
                                 "Training step of the latest evaluated snapshot", ("sae",))
EVALUATOR_EVALUATION = Metric("boardlens_evaluator_evaluation_seconds", HISTOGRAM,
                              "Wall time of one SAE evaluation", buckets=_EVAL_S)
EVALUATOR_EVALUATIONS = Metric("boardlens_evaluator_evaluations_total", COUNTER, "Snapshots evaluated",
                               ("sae",))
EVALUATOR_SNAPSHOTS_SKIPPED = Metric("boardlens_evaluator_snapshots_skipped_total", COUNTER,
                                     "Snapshots superseded before evaluation")
EVALUATOR_EVAL_SET_GAMES = Metric("boardlens_evaluator_eval_set_games", GAUGE, "Games in the evaluation set",
                                  ("split",))
EVALUATOR_REFERENCE_COVERAGE = Metric("boardlens_evaluator_reference_coverage", GAUGE,
                                      "Coverage of a floor/ceiling reference", ("reference", "family"))
EVALUATOR_REFERENCE_RECONSTRUCTION = Metric("boardlens_evaluator_reference_reconstruction", GAUGE,
                                            "Board reconstruction F1 of a floor/ceiling reference",
                                            ("reference", "family"))

EVALUATOR_LATENT_SCORE = Metric("boardlens_evaluator_latent_score", GAUGE,
                                "Mean FADE score (clarity, responsiveness, purity, faithfulness) of an SAE's "
                                "described latents, by the family of their descriptions ('all': every latent)",
                                ("sae", "family", "score"))
EVALUATOR_LATENT_SHARE = Metric("boardlens_evaluator_latent_share_ratio", GAUGE,
                                "Share of an SAE's described latents whose FADE score is at least 0.5",
                                ("sae", "family", "score"))
EVALUATOR_REFERENCE_LATENT_SCORE = Metric("boardlens_evaluator_reference_latent_score", GAUGE,
                                          "Mean FADE score of a reference's described features (MLP neurons, "
                                          "random SAE)", ("reference", "family", "score"))
EVALUATOR_DESCRIBE = Metric("boardlens_evaluator_describe_seconds", HISTOGRAM,
                            "Wall time of describing and scoring every latent of one snapshot", buckets=_EVAL_S)
EVALUATOR_DESCRIBE_FAILURES = Metric("boardlens_evaluator_describe_failures_total", COUNTER,
                                     "Snapshot descriptions that raised (the evaluation itself stands; the log has the traceback)")


def _collect() -> dict[str, Metric]:
    found: list[Metric] = []
    for value in list(globals().values()):
        if isinstance(value, Channel):
            found.extend(value)
        elif isinstance(value, Metric):
            found.append(value)
    found.extend(PROCESS)
    table = {m.name: m for m in found}
    assert len(table) == len(found), "a metric name is declared twice"
    return table


CATALOGUE: dict[str, Metric] = _collect()
"""Every metric, by name."""
SERIES: dict[str, Metric] = {s: m for m in CATALOGUE.values() for s in m.series()}
"""Every exposed sample name (histogram `_bucket/_sum/_count`, counter `_total`) -> its metric."""


def of_service(service: str) -> list[Metric]:
    """What one service exports: its own subsystem and the shared metrics."""
    return [m for m in CATALOGUE.values() if m.service in ("", service)]


# --- PromQL ------------------------------------------------------------------------------
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:$])[a-zA-Z_:][a-zA-Z0-9_:]*(?![\w(])(?!\s*\()")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
             "unless", "offset", "inf", "nan", "atan2"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a series selector) selects.

    Strings, label matchers, ranges and grouping label lists are removed first, so label names
    and values never count; a name followed by `(` is a function or an aggregation.
    """
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPINGS.sub("", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in _KEYWORDS}

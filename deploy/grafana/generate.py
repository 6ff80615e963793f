"""Generate the BoardLens Grafana dashboard (deploy/grafana/boardlens.json) from code.

    python deploy/grafana/generate.py          # rewrite boardlens.json next to this file
    python deploy/grafana/generate.py --check  # exit 1 if the committed JSON is stale

Panels are data: ROWS holds (row title, panels) and each Panel is (title, queries, unit)
with queries as (PromQL, legend) pairs; everything else (ids, grid, datasource) is derived.
Metrics come from the catalogue (boardlens.services.metrics), never as strings: a renamed
metric renames every query, and rate() of a gauge or a quantile of a counter fails here.
tests/deploy/test_dashboard.py runs every query against a real Prometheus scraping a real
run, so the conventions below are load-bearing:
- the SAE variable is only used as `sae=~"$sae"` (multi-value + "All" = a regex);
- counters are read with rate(...[$__rate_interval]); evaluations and snapshots are sparse
  (one every few hundred steps), so their rates and the evaluation-duration quantiles use a
  fixed 5m window instead, else most windows would hold no event;
- counters with a `reason` label exist at 0 for every reason from the start: their panels draw
  the total and, only while non-zero, one line per reason (not a dozen flat lines);
- job names differ between deployments (local static config and the kube-prometheus-stack
  PodMonitor: boardlens-<service>; annotation-based pod discovery: kubernetes-pods, with the
  pod labels copied as app_kubernetes_io_*): panels find a service's series through
  boardlens_build_info's `service` label, and Prometheus' own `up` (which has no BoardLens
  labels) through either naming (UP);
- floor/ceiling references (boardlens_evaluator_reference_*) are legended "[reference] ..." and
  drawn dashed (an override on that legend pattern) beside the SAEs' solid lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

from boardlens.atomic import write_text
from boardlens.services import metrics as M
from boardlens.services.metrics import COUNTER, GAUGE, HISTOGRAM, Metric

OUT = Path(__file__).with_name("boardlens.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
SAE = 'sae=~"$sae"'
UP = '(up{job=~"boardlens.*"} or up{app_kubernetes_io_part_of="boardlens"})'
"""Prometheus' `up` of every BoardLens target, under either job naming."""


class Panel(NamedTuple):
    title: str
    queries: tuple[tuple[str, str], ...]
    """(PromQL, legend format) pairs, one Grafana target each."""
    unit: str
    """Grafana unit id: s, Bps, percentunit, short, ..."""


def sel(metric: Metric, match: str = "", part: str = "") -> str:
    """Selector of a catalogue metric's series (part: a histogram's _bucket, _sum or _count)."""
    name = metric.name + part
    if name not in metric.series():
        raise ValueError(f"{metric.name} ({metric.kind}) exposes no series {name}")
    return f"{name}{{{match}}}" if match else name


def gauge(metric: Metric, match: str = "") -> str:
    if metric.kind != GAUGE:
        raise ValueError(f"{metric.name} is a {metric.kind}: read it with rate()")
    return sel(metric, match)


def rate(metric: Metric, by: str = "", window: str = RATE, match: str = "", part: str = "") -> str:
    """sum [by (labels)] (rate(metric{match}[window])): counters, or a histogram's part."""
    if metric.kind not in (COUNTER, HISTOGRAM):
        raise ValueError(f"rate() of the gauge {metric.name}")
    agg = f"sum by ({by}) " if by else "sum"
    return f"{agg}(rate({sel(metric, match, part)}[{window}]))"


def quantile(q: float, histogram: Metric, window: str = RATE) -> str:
    if histogram.kind != HISTOGRAM:
        raise ValueError(f"{histogram.name} is not a histogram")
    return f"histogram_quantile({q}, {rate(histogram, 'le', window, part='_bucket')})"


def p50_p95(histogram: Metric, window: str = RATE) -> tuple[tuple[str, str], ...]:
    return ((quantile(0.5, histogram, window), "p50"), (quantile(0.95, histogram, window), "p95"))


def by_label(metric: Metric, label: str, what: str) -> tuple[tuple[str, str], ...]:
    """The total rate, and the rate of each value of `label` (a reason, a sending producer)
    only while it is non-zero."""
    return ((rate(metric), f"{what} (all {label}s)"), (f"{rate(metric, label)} > 0", f"{what} {{{{{label}}}}}"))


def per_service(expr: str) -> str:
    """Sum by service of a per-target series (e.g. process_*), whatever the job names: joined
    to boardlens_build_info, which carries the service."""
    return f"sum by (service) ({expr} * on (job, instance) group_left (service) {gauge(M.BUILD_INFO)})"


def per_minute(metric: Metric, by: str = "", match: str = "") -> str:
    """Sparse events (evaluations, snapshots, refusals): a fixed 5m window, per minute."""
    return f"{rate(metric, by, '5m', match)} * 60"


def per_sae(metric: Metric, legend: str = "{{sae}}", match: str = "") -> tuple[str, str]:
    return gauge(metric, f"{SAE}, {match}" if match else SAE), legend


ROWS: list[tuple[str, list[Panel]]] = [
    ("Overview", [
        Panel("Services: scraped (Prometheus up) and running (build info)", (
            (f"max by (job, instance) {UP}", "{{job}} {{instance}} scraped"),  # Prometheus' own up
            (f"count by (service, version) ({gauge(M.BUILD_INFO)})", "{{service}} {{version}}"),
        ), "short"),
        Panel("Tokens / s: produced and trained", (
            (rate(M.PRODUCER_TOKENS), "produced"),
            (rate(M.TRAINER_TOKENS), "received by trainer"),
        ), "short"),
        Panel("Trainer steps / s per SAE", ((rate(M.TRAINER_STEPS, "sae", match=SAE), "{{sae}}"),), "short"),
        Panel("CPU cores used per service", (
            (per_service(f"rate({sel(M.CATALOGUE['process_cpu_seconds_total'])}[{RATE}])"), "{{service}}"),
        ), "short"),
        Panel("Resident memory per service", (
            (per_service(gauge(M.CATALOGUE["process_resident_memory_bytes"])), "{{service}}"),
        ), "bytes"),
    ]),
    ("Producer", [
        Panel("Producer tokens / s", ((rate(M.PRODUCER_TOKENS), "tokens/s"),), "short"),
        Panel("Producer batches and games / s", (
            (rate(M.PRODUCER_BATCHES), "batches/s"),
            (rate(M.PRODUCER_GAMES), "games/s"),
        ), "short"),
        Panel("Bytes / s: sent and received", (
            (rate(M.PRODUCER_BYTES), "producer sent"),
            (rate(M.TRAINER_DATA.bytes), "trainer received"),
            (rate(M.EVALUATOR_DATA.bytes), "evaluator received (data)"),
            (rate(M.EVALUATOR_SNAPSHOTS.bytes), "evaluator received (snapshots)"),
        ), "Bps"),
        Panel("LM forward time per batch", p50_p95(M.PRODUCER_FORWARD), "s"),
        Panel("Game generation + labelling time per batch", p50_p95(M.PRODUCER_LABELLING), "s"),
        Panel("Send blocked on lossless subscribers, per send", p50_p95(M.PRODUCER_SEND_BLOCKED), "s"),
        Panel("Share of wall time blocked on sends", (
            (rate(M.PRODUCER_SEND_BLOCKED, part="_sum"), "blocked"),
        ), "percentunit"),
        Panel("Send timeouts / s", ((rate(M.PRODUCER_SEND_TIMEOUTS), "timeouts/s"),), "short"),
        Panel("Subscribers", ((f"sum by (mode) ({gauge(M.PRODUCER_SUBSCRIBERS)})", "{{mode}}"),), "short"),
        Panel("Send in progress blocked for (s); stream restarts", (
            (f"max({gauge(M.PRODUCER_SEND_BLOCKED_NOW)})", "blocked now"),
            (f"max({gauge(M.PRODUCER_RESTARTS)})", "restarts (state file)"),
        ), "short"),
        Panel("Connections refused (CURVE key not authorised) / min", (
            (per_minute(M.PRODUCER_AUTH_DENIED), "producer"),
            (per_minute(M.TRAINER_AUTH_DENIED), "trainer (snapshots)"),
        ), "short"),
    ]),
    ("Trainer", [
        Panel("Trainer tokens / s", (
            (rate(M.TRAINER_TOKENS), "received"),
            (rate(M.TRAINER_TRAINED_TOKENS, "sae", match=SAE), "trained {{sae}}"),
        ), "short"),
        Panel("Sweep step time (all SAEs)", p50_p95(M.TRAINER_STEP), "s"),
        Panel("Shuffle buffer fill (unread activations)", (
            (f"sum({gauge(M.TRAINER_BUFFER)})", "unread"),
        ), "short"),
        Panel("Loss per SAE", (per_sae(M.TRAINER_LOSS, match='term="loss"'),), "short"),
        Panel("Loss terms per SAE", (
            per_sae(M.TRAINER_LOSS, "{{sae}} {{term}}", 'term=~"recon|sparsity|aux"'),
        ), "short"),
        Panel("L0 per SAE (training batch)", (per_sae(M.TRAINER_L0),), "short"),
        Panel("Variance explained per SAE (training batch)", (per_sae(M.TRAINER_VARIANCE_EXPLAINED),),
              "percentunit"),
        Panel("Dead latents per SAE (training)", (per_sae(M.TRAINER_DEAD_LATENTS),), "percentunit"),
        Panel("Sparsity schedule: p and alpha", (
            per_sae(M.TRAINER_SPARSITY_P, "{{sae}} p"),
            per_sae(M.TRAINER_SPARSITY_ALPHA, "{{sae}} alpha"),
        ), "short"),
        Panel("Steps / s per SAE (from its own update time)", (
            (f"{rate(M.TRAINER_UPDATE, 'sae', match=SAE, part='_count')} / "
             f"{rate(M.TRAINER_UPDATE, 'sae', match=SAE, part='_sum')}", "{{sae}}"),
        ), "short"),
        Panel("Checkpoints: step of the latest and its write time (s)", (
            (f"max({gauge(M.TRAINER_LAST_CHECKPOINT_STEP)})", "step"),
            (f"max({gauge(M.TRAINER_LAST_CHECKPOINT)})", "write seconds"),
        ), "short"),
        Panel("Trainer messages / s: received, lost, rejected", (
            (rate(M.TRAINER_DATA.received), "received"),
            *by_label(M.TRAINER_DATA.lost, "source", "lost batches"),
            *by_label(M.TRAINER_DATA.rejected, "reason", "rejected"),
        ), "short"),
        Panel("Senders declared gone (silent past sender_timeout_s) / min", (
            (per_minute(M.TRAINER_DATA.gone, "source"), "trainer: producer {{source}}"),
            (per_minute(M.EVALUATOR_DATA.gone, "source"), "evaluator: producer {{source}}"),
            (per_minute(M.EVALUATOR_SNAPSHOTS.gone, "source"), "evaluator: trainer shard {{source}}"),
        ), "short"),
        Panel("Steps skipped (non-finite loss or gradient) / min", (
            (per_minute(M.TRAINER_STEPS_SKIPPED, "sae", SAE), "{{sae}}"),
        ), "short"),
        Panel("Snapshots published / min by outcome", (
            (per_minute(M.TRAINER_SNAPSHOTS, "outcome"), "{{outcome}}"),
        ), "short"),
    ]),
    ("Evaluator", [
        Panel("Family averages per SAE: coverage and reconstruction", (
            per_sae(M.EVALUATOR_COVERAGE, "{{sae}} {{family}} coverage", 'family=~".*average"'),
            per_sae(M.EVALUATOR_RECONSTRUCTION, "{{sae}} {{family}} reconstruction", 'family=~".*average"'),
            (gauge(M.EVALUATOR_REFERENCE_RECONSTRUCTION, 'family="average"'),
             "[{{reference}}] average reconstruction"),
        ), "percentunit"),
        Panel("Coverage per SAE and family", (
            per_sae(M.EVALUATOR_COVERAGE, "{{sae}} {{family}}"),
            (gauge(M.EVALUATOR_REFERENCE_COVERAGE, 'family!~".*average"'), "[{{reference}}] {{family}}"),
        ), "percentunit"),
        Panel("Board reconstruction F1 per SAE and family", (
            per_sae(M.EVALUATOR_RECONSTRUCTION, "{{sae}} {{family}}"),
            (gauge(M.EVALUATOR_REFERENCE_RECONSTRUCTION, 'family!~".*average"'), "[{{reference}}] {{family}}"),
        ), "percentunit"),
        Panel("Latents described by the board: mean FADE scores (all latents)", (
            per_sae(M.EVALUATOR_LATENT_SCORE, "{{sae}} {{score}}", 'family="all"'),
            (gauge(M.EVALUATOR_REFERENCE_LATENT_SCORE, 'family="all"'), "[{{reference}}] {{score}}"),
        ), "percentunit"),
        Panel("Share of latents with clarity / responsiveness >= 0.5", (
            per_sae(M.EVALUATOR_LATENT_SHARE, "{{sae}} {{score}}", 'family="all",score=~"clarity|responsiveness"'),
        ), "percentunit"),
        Panel("L0 per SAE (eval set)", (per_sae(M.EVALUATOR_L0),), "short"),
        Panel("Variance explained and dead latents (eval set)", (
            per_sae(M.EVALUATOR_VARIANCE_EXPLAINED, "{{sae}} FVE"),
            per_sae(M.EVALUATOR_DEAD_LATENTS, "{{sae}} dead"),
        ), "percentunit"),
        Panel("Loss recovered (SAE in the residual; 1 = none lost, 0 = as bad as zeros)", (
            per_sae(M.EVALUATOR_LOSS_RECOVERED),), "percentunit"),
        Panel("KL(clean || with the SAE), nats per move", (per_sae(M.EVALUATOR_KL),), "short"),
        Panel("Training step of the evaluated snapshot", (per_sae(M.EVALUATOR_SNAPSHOT_STEP),), "short"),
        Panel("Evaluation duration (5m window)", p50_p95(M.EVALUATOR_EVALUATION, "5m"), "s"),
        Panel("Latent description duration (5m window)", p50_p95(M.EVALUATOR_DESCRIBE, "5m"), "s"),
        Panel("Evaluations / min per SAE", (
            (per_minute(M.EVALUATOR_EVALUATIONS, "sae", SAE), "{{sae}}"),
            (per_minute(M.EVALUATOR_SNAPSHOTS_SKIPPED), "superseded (skipped)"),
            (per_minute(M.EVALUATOR_DESCRIBE_FAILURES), "descriptions failed"),
        ), "short"),
        Panel("Eval set games", ((f"sum by (split) ({gauge(M.EVALUATOR_EVAL_SET_GAMES)})", "{{split}}"),),
              "short"),
        Panel("Evaluator messages / s", (
            (rate(M.EVALUATOR_DATA.received), "data received"),
            (rate(M.EVALUATOR_DATA.lost), "data lost (lossy, expected)"),
            (rate(M.EVALUATOR_SNAPSHOTS.received), "snapshot messages"),
            (rate(M.EVALUATOR_SNAPSHOTS.lost), "snapshot messages lost"),
            *by_label(M.EVALUATOR_DATA.rejected, "reason", "data rejected"),
            *by_label(M.EVALUATOR_SNAPSHOTS.rejected, "reason", "snapshots rejected"),
        ), "short"),
    ]),
]

PANEL_W, PANEL_H, COLUMNS = 8, 8, 3


def _panel(pid: int, p: Panel, x: int, y: int) -> dict:
    return {
        "id": pid,
        "type": "timeseries",
        "title": p.title,
        "datasource": DS,
        "gridPos": {"h": PANEL_H, "w": PANEL_W, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {
                "unit": p.unit,
                "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                           "spanNulls": False},
            },
            "overrides": [{
                "matcher": {"id": "byRegexp", "options": "^\\[.*"},
                "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
            }] if any(legend.startswith("[") for _, legend in p.queries) else [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            {"datasource": DS, "expr": expr, "legendFormat": legend, "range": True,
             "refId": chr(ord("A") + i)}
            for i, (expr, legend) in enumerate(p.queries)
        ],
    }


def _templating() -> dict:
    sae_query = f"label_values({M.TRAINER_LOSS.name}, sae)"
    return {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
         "regex": ""},
        {"name": "sae", "label": "SAE", "type": "query", "datasource": DS,
         "query": {"query": sae_query, "refId": "PrometheusVariableQueryEditor"},
         "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
         "hide": 0, "includeAll": True, "allValue": ".*", "multi": True, "options": [],
         "refresh": 2, "regex": "", "sort": 1},
    ]}


def dashboard() -> dict:
    panels: list[dict] = []
    pid, y = 1, 0
    for row_title, row_panels in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        pid, y = pid + 1, y + 1
        for i, p in enumerate(row_panels):
            panels.append(_panel(pid, p, (i % COLUMNS) * PANEL_W, y + (i // COLUMNS) * PANEL_H))
            pid += 1
        y += -(-len(row_panels) // COLUMNS) * PANEL_H
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard"}]},
        "description": "BoardLens producer, trainer and evaluator (generated by deploy/grafana/generate.py)",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels,
        "refresh": "10s",
        "schemaVersion": 39,
        "tags": ["boardlens"],
        "templating": _templating(),
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "BoardLens",
        "uid": "boardlens",
        "version": 1,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, as written in the dashboard."""
    return [(p.title, expr) for _, ps in ROWS for p in ps for expr, _ in p.queries]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if boardlens.json is stale")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python {Path(__file__).as_posix()}", file=sys.stderr)
            return 1
        return 0
    write_text(OUT, text)
    print(f"wrote {OUT} ({sum(len(ps) for _, ps in ROWS)} panels, {len(queries())} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

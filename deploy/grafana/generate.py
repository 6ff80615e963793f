"""Generate the BoardLens Grafana dashboard (deploy/grafana/boardlens.json) from code.

    python deploy/grafana/generate.py          # rewrite boardlens.json next to this file
    python deploy/grafana/generate.py --check  # exit 1 if the committed JSON is stale

Panels are data: ROWS holds (row title, panels) and each Panel is (title, queries, unit)
with queries as (PromQL, legend) pairs; everything else (ids, grid, datasource) is derived.
tests/deploy/test_dashboard.py runs every query against a real Prometheus scraping a real
run, so the conventions below are load-bearing:
- the SAE variable is only used as `sae=~"$sae"` (multi-value + "All" = a regex);
- counters are read with rate(...[$__rate_interval]); evaluations and snapshots are sparse
  (one every few hundred steps), so their rates and the evaluation-duration quantiles use a
  fixed 5m window instead, else most windows would hold no event;
- a counter with a `reason` label has no series until the first rejection, so those queries
  end in `or on() ...vector(0)` and show 0 instead of "No data";
- floor/ceiling references (boardlens_eval_reference_*) are legended "[reference] ..." and
  drawn dashed (an override on that legend pattern) beside the SAEs' solid lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

from boardlens.atomic import write_text

OUT = Path(__file__).with_name("boardlens.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
SAE = 'sae=~"$sae"'


class Panel(NamedTuple):
    title: str
    queries: tuple[tuple[str, str], ...]
    """(PromQL, legend format) pairs, one Grafana target each."""
    unit: str
    """Grafana unit id: s, Bps, percentunit, short, ..."""


def rate(metric: str, by: str = "", window: str = RATE, match: str = "") -> str:
    """sum [by (labels)] (rate(metric{match}[window]))."""
    sel = f"{metric}{{{match}}}" if match else metric
    agg = f"sum by ({by}) " if by else "sum"
    return f"{agg}(rate({sel}[{window}]))"


def quantile(q: float, histogram: str, window: str = RATE) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket[{window}])))"


def p50_p95(histogram: str, window: str = RATE) -> tuple[tuple[str, str], ...]:
    return ((quantile(0.5, histogram, window), "p50"), (quantile(0.95, histogram, window), "p95"))


def by_reason_or_zero(metric: str, what: str) -> tuple[str, str]:
    """Rate by reason; a single 0 series labelled reason="none" while nothing was rejected."""
    expr = (f"{rate(metric, 'reason')} or on() "
            f'label_replace(vector(0), "reason", "none", "", "")')
    return expr, f"{what} {{{{reason}}}}"


ROWS: list[tuple[str, list[Panel]]] = [
    ("Overview", [
        Panel("Services up", (("max by (service) (boardlens_up)", "{{service}}"),), "short"),
        Panel("Tokens / s: produced and trained", (
            (rate("boardlens_producer_tokens_total"), "produced"),
            (rate("boardlens_trainer_tokens_total"), "received by trainer"),
        ), "short"),
        Panel("Trainer steps / s per SAE", (
            (rate("boardlens_trainer_steps_total", "sae", match=SAE), "{{sae}}"),
        ), "short"),
        Panel("CPU cores used per service", (
            ("sum by (job) (rate(process_cpu_seconds_total{job=~\"boardlens.*\"}[$__rate_interval]))",
             "{{job}}"),
        ), "short"),
        Panel("Resident memory per service", (
            ("sum by (job) (process_resident_memory_bytes{job=~\"boardlens.*\"})", "{{job}}"),
        ), "bytes"),
    ]),
    ("Producer", [
        Panel("Producer tokens / s", ((rate("boardlens_producer_tokens_total"), "tokens/s"),), "short"),
        Panel("Producer batches and games / s", (
            (rate("boardlens_producer_batches_total"), "batches/s"),
            (rate("boardlens_producer_games_total"), "games/s"),
        ), "short"),
        Panel("Bytes / s: sent and received", (
            (rate("boardlens_producer_bytes_total"), "producer sent"),
            (rate("boardlens_trainer_received_bytes_total"), "trainer received"),
            (rate("boardlens_evaluator_received_bytes_total"), "evaluator received (data)"),
            (rate("boardlens_evaluator_snapshot_received_bytes_total"), "evaluator received (snapshots)"),
        ), "Bps"),
        Panel("LM forward time per batch", p50_p95("boardlens_producer_forward_seconds"), "s"),
        Panel("Game generation + labelling time per batch",
              p50_p95("boardlens_producer_labelling_seconds"), "s"),
        Panel("Send blocked on lossless subscribers, per send",
              p50_p95("boardlens_producer_send_blocked_seconds"), "s"),
        Panel("Share of wall time blocked on sends", (
            (rate("boardlens_producer_send_blocked_seconds_sum"), "blocked"),
        ), "percentunit"),
        Panel("Send timeouts / s", ((rate("boardlens_producer_send_timeouts_total"), "timeouts/s"),),
              "short"),
        Panel("Subscribers", (("sum by (mode) (boardlens_producer_subscribers)", "{{mode}}"),), "short"),
        Panel("Send in progress blocked for (s); stream restarts", (
            ("max(boardlens_producer_send_blocked_now_seconds)", "blocked now"),
            ("max(boardlens_producer_stream_restarts)", "restarts (state file)"),
        ), "short"),
        Panel("Connections refused (CURVE key not authorised) / min", (
            (f"{rate('boardlens_producer_auth_denied_total', window='5m')} * 60", "producer"),
            (f"{rate('boardlens_trainer_auth_denied_total', window='5m')} * 60", "trainer (snapshots)"),
        ), "short"),
    ]),
    ("Trainer", [
        Panel("Trainer tokens / s", (
            (rate("boardlens_trainer_tokens_total"), "received"),
            (rate("boardlens_trainer_trained_tokens_total", "sae", match=SAE), "trained {{sae}}"),
        ), "short"),
        Panel("Sweep step time (all SAEs)", p50_p95("boardlens_trainer_step_seconds"), "s"),
        Panel("Shuffle buffer fill (unread activations)", (
            ("sum(boardlens_trainer_buffer_activations)", "unread"),
        ), "short"),
        Panel("Loss per SAE", ((f'boardlens_sae_loss{{{SAE}, term="loss"}}', "{{sae}}"),), "short"),
        Panel("Loss terms per SAE", (
            (f'boardlens_sae_loss{{{SAE}, term=~"recon|sparsity|aux"}}', "{{sae}} {{term}}"),
        ), "short"),
        Panel("L0 per SAE (training batch)", ((f"boardlens_sae_l0{{{SAE}}}", "{{sae}}"),), "short"),
        Panel("Variance explained per SAE (training batch)", (
            (f"boardlens_sae_variance_explained{{{SAE}}}", "{{sae}}"),
        ), "percentunit"),
        Panel("Dead latents per SAE", ((f"boardlens_sae_dead_fraction{{{SAE}}}", "{{sae}}"),),
              "percentunit"),
        Panel("Sparsity schedule: p and alpha", (
            (f"boardlens_sae_p{{{SAE}}}", "{{sae}} p"),
            (f"boardlens_sae_alpha{{{SAE}}}", "{{sae}} alpha"),
        ), "short"),
        Panel("Steps / s per SAE (from its own update time)", (
            (f"boardlens_sae_steps_per_second{{{SAE}}}", "{{sae}}"),
        ), "short"),
        Panel("Checkpoints: step of the latest and its write time (s)", (
            ("max(boardlens_trainer_checkpoint_step)", "step"),
            ("max(boardlens_trainer_checkpoint_seconds)", "write seconds"),
        ), "short"),
        Panel("Trainer messages / s: received, lost, rejected", (
            (rate("boardlens_trainer_messages_total"), "received"),
            (rate("boardlens_trainer_batches_lost_total"), "lost batches"),
            by_reason_or_zero("boardlens_trainer_messages_rejected_total", "rejected"),
        ), "short"),
        Panel("Steps skipped (non-finite loss or gradient) / min", (
            (f"{rate('boardlens_trainer_steps_skipped_total', 'sae', '5m', SAE)} * 60", "{{sae}}"),
        ), "short"),
        Panel("Snapshots published / min by outcome", (
            (f"{rate('boardlens_trainer_snapshots_total', 'outcome', '5m')} * 60", "{{outcome}}"),
        ), "short"),
    ]),
    ("Evaluator", [
        Panel("Family averages per SAE: coverage and reconstruction", (
            (f'boardlens_eval_coverage{{{SAE}, family=~".*average"}}', "{{sae}} {{family}} coverage"),
            (f'boardlens_eval_reconstruction{{{SAE}, family=~".*average"}}', "{{sae}} {{family}} reconstruction"),
            ('boardlens_eval_reference_reconstruction{family="average"}', "[{{reference}}] average reconstruction"),
        ), "percentunit"),
        Panel("Coverage per SAE and family", (
            (f"boardlens_eval_coverage{{{SAE}}}", "{{sae}} {{family}}"),
            ('boardlens_eval_reference_coverage{family!~".*average"}', "[{{reference}}] {{family}}"),
        ), "percentunit"),
        Panel("Board reconstruction F1 per SAE and family", (
            (f"boardlens_eval_reconstruction{{{SAE}}}", "{{sae}} {{family}}"),
            ('boardlens_eval_reference_reconstruction{family!~".*average"}', "[{{reference}}] {{family}}"),
        ), "percentunit"),
        Panel("L0 per SAE (eval set)", ((f"boardlens_eval_l0{{{SAE}}}", "{{sae}}"),), "short"),
        Panel("Variance explained and alive latents (eval set)", (
            (f"boardlens_eval_variance_explained{{{SAE}}}", "{{sae}} FVE"),
            (f"boardlens_eval_alive_fraction{{{SAE}}}", "{{sae}} alive"),
        ), "percentunit"),
        Panel("Training step of the evaluated snapshot", (
            (f"boardlens_eval_snapshot_step{{{SAE}}}", "{{sae}}"),
        ), "short"),
        Panel("Evaluation duration (5m window)", p50_p95("boardlens_eval_duration_seconds", "5m"), "s"),
        Panel("Evaluations / min per SAE", (
            (f"{rate('boardlens_eval_evaluations_total', 'sae', '5m', SAE)} * 60", "{{sae}}"),
            (f"{rate('boardlens_eval_snapshots_skipped_total', window='5m')} * 60",
             "superseded (skipped)"),
        ), "short"),
        Panel("Eval set games", (("sum by (split) (boardlens_eval_set_games)", "{{split}}"),), "short"),
        Panel("Evaluator messages / s", (
            (rate("boardlens_evaluator_messages_total"), "data received"),
            (rate("boardlens_evaluator_batches_lost_total"), "data lost (lossy, expected)"),
            (rate("boardlens_evaluator_snapshot_messages_total"), "snapshot messages"),
            (rate("boardlens_evaluator_snapshot_messages_lost_total"), "snapshot messages lost"),
            by_reason_or_zero("boardlens_evaluator_messages_rejected_total", "data rejected"),
            by_reason_or_zero("boardlens_evaluator_snapshot_messages_rejected_total",
                              "snapshots rejected"),
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
    sae_query = "label_values(boardlens_sae_loss, sae)"
    return {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
         "regex": ""},
        {"name": "sae", "label": "SAE", "type": "query", "datasource": DS,
         "definition": sae_query, "query": {"query": sae_query, "refId": "PrometheusVariableQueryEditor"},
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

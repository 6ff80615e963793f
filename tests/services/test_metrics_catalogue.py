"""The metric catalogue (boardlens.services.metrics): Prometheus naming conventions, and each
service exports exactly its part of the catalogue (read from the real metric classes)."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry

from boardlens.services import metrics as M
from boardlens.services.evaluator import EvaluatorMetrics
from boardlens.services.producer import ProducerMetrics
from boardlens.services.telemetry import Telemetry
from boardlens.services.trainer import TrainerMetrics

CLASSES = {"producer": ProducerMetrics, "trainer": TrainerMetrics, "evaluator": EvaluatorMetrics}


def test_names_follow_the_conventions():
    for m in M.CATALOGUE.values():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", m.name), m.name
        assert m.kind in (M.COUNTER, M.GAUGE, M.HISTOGRAM), m.name
        assert m.help and set(m.labels) <= set(M.LABELS), m.name
        assert m.name.endswith("_total") == (m.kind == M.COUNTER), f"{m.name}: _total is for counters"
        assert bool(m.buckets) == (m.kind == M.HISTOGRAM), m.name
        if m.kind == M.HISTOGRAM:
            assert m.name.endswith(("_seconds", "_bytes")), f"{m.name}: a histogram needs its base unit"
        if m.kind == M.GAUGE and m.name.endswith("_seconds") and not m.name.startswith("process_"):
            # a latency is a histogram; a gauge in seconds holds one value of a moment
            assert "_now_" in m.name or "_last_" in m.name, m.name
        assert "fraction" not in m.name and "alive" not in m.name, f"{m.name}: 0..1 is _ratio, latents dead"


def test_one_subsystem_per_service_and_nothing_like_up():
    for m in M.CATALOGUE.values():
        assert m.name != "up" and not re.search(r"(^|_)up(_|$)", m.name), m.name
        if m.shared:
            assert m.name == M.BUILD_INFO.name or m.name.startswith("process_"), m.name
        else:
            assert m.service in M.SERVICES and m.name.startswith(f"boardlens_{m.service}_"), m.name
    # the old second subsystems (trainer's sae_*, evaluator's eval_*) are gone
    assert not [n for n in M.CATALOGUE if n.startswith(("boardlens_sae_", "boardlens_eval_"))]


def test_one_name_per_quantity_per_service():
    """A quantity both services measure (L0, variance explained, dead latents) exists once in
    each, with the same name after the subsystem."""
    tails = {}
    for m in M.CATALOGUE.values():
        if not m.shared:
            tails.setdefault(m.name.split("_", 2)[2], set()).add(m.service)
    for tail in ("l0", "variance_explained_ratio", "dead_latents_ratio"):
        assert tails[tail] == {"trainer", "evaluator"}, tail


def test_series_names_as_prometheus_client_exposes_them():
    assert M.PRODUCER_FORWARD.series() == tuple(f"boardlens_producer_forward_seconds_{s}"
                                                for s in ("bucket", "sum", "count"))
    assert M.SERIES["boardlens_trainer_update_seconds_count"] is M.TRAINER_UPDATE
    assert M.SERIES["boardlens_producer_tokens_total"] is M.PRODUCER_TOKENS
    assert "boardlens_producer_tokens" not in M.SERIES  # a counter is only selectable with _total
    assert "boardlens_producer_forward_seconds" not in M.SERIES  # a histogram only by its parts


def _exported(service: str) -> dict[str, tuple[str, str]]:
    """{name as the catalogue writes it: (type, help)} of everything the service registers."""
    tel = Telemetry(service, port=0)
    CLASSES[service](tel)
    registry: CollectorRegistry = tel.registry
    return {fam.name + ("_total" if fam.type == "counter" else ""): (fam.type, fam.documentation)
            for fam in registry.collect()}


@pytest.mark.parametrize("service", M.SERVICES)
def test_each_service_exports_exactly_its_catalogue(service):
    exported = _exported(service)
    declared = {m.name: (m.kind, m.help) for m in M.of_service(service)}
    assert exported == declared


def test_telemetry_refuses_a_metric_outside_the_catalogue():
    tel = Telemetry("producer", port=0)
    with pytest.raises(ValueError, match="not in the catalogue"):
        tel.metric(M.Metric("boardlens_producer_surprise_total", M.COUNTER, "not declared"))
    with pytest.raises(ValueError, match="not in the catalogue"):  # a declared name, other help
        tel.metric(M.PRODUCER_TOKENS._replace(help="something else"))


@pytest.mark.parametrize("expr,names", [
    ('sum by (job, le) (rate(a_bucket{le="0.5", x=~"y|z"}[$__rate_interval]))', {"a_bucket"}),
    ("b / on (job) group_left () max by (job) (c{reference=~\"random_sae.*\"})", {"b", "c"}),
    ('x or on() label_replace(vector(0), "reason", "none", "", "")', {"x"}),
    ("boardlens:tokens:rate1m == 0 and up > bool 1e-3 unless d offset 5m", {"boardlens:tokens:rate1m", "up", "d"}),
    ("absent(e{service=\"producer\"}) or absent (f)", {"e", "f"}),
    ("histogram_quantile(0.95, sum without (instance) (rate(g[1m]))) * 60", {"g"}),
    ('h{job="boardlens-producer", instance="127.0.0.1:9101"}', {"h"}),
])
def test_promql_metric_names(expr, names):
    assert M.promql_metric_names(expr) == names


def test_metrics_endpoint_negotiates_the_format_and_compresses():
    """prometheus_client's exposition: OpenMetrics when asked (Prometheus asks), gzip when
    accepted, the text format otherwise; /healthz beside it, anything else 404."""
    import gzip
    import json
    import urllib.error
    import urllib.request

    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    from tests.services.helpers import free_ports as ports

    (port,) = ports(1)
    tel = Telemetry("trainer", port=port)
    TrainerMetrics(tel)
    url = f"http://127.0.0.1:{port}"

    def get(path, **headers):
        with urllib.request.urlopen(urllib.request.Request(url + path, headers=headers), timeout=5) as r:
            return r.headers, r.read()

    try:
        h, text = get("/metrics")
        assert h["Content-Type"].startswith("text/plain; version=0.0.4") and b"boardlens_build_info" in text
        h, om = get("/metrics", Accept="application/openmetrics-text; version=1.0.0; charset=utf-8")
        assert h["Content-Type"].startswith("application/openmetrics-text") and om.endswith(b"# EOF\n")
        assert any(f.name == "boardlens_build_info" for f in text_string_to_metric_families(om.decode()))
        h, packed = get("/metrics", **{"Accept-Encoding": "gzip"})
        assert h["Content-Encoding"] == "gzip" and gzip.decompress(packed).startswith(b"# HELP")
        h, body = get("/healthz")
        assert h["Content-Type"] == "application/json" and json.loads(body)["service"] == "trainer"
        with pytest.raises(urllib.error.HTTPError) as e:
            get("/other")
        assert e.value.code == 404
    finally:
        tel.close()

"""deploy/prometheus: config and rules pass promtool, alert unit tests pass, and the rules and
their unit tests name only metrics of the catalogue (boardlens.services.metrics)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from boardlens.services import metrics as M

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"

promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                              reason="promtool missing: run `make deps` (apt-get install -y prometheus)")


def _promtool(*args: str) -> None:
    r = subprocess.run(["promtool", *args], cwd=PROM, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}{r.stderr}"


@promtool
def test_config_is_valid():
    _promtool("check", "config", "prometheus.yml")


@promtool
def test_rules_are_valid():
    _promtool("check", "rules", "rules.yml")


@promtool
def test_alert_unit_tests():
    _promtool("test", "rules", "rules_test.yml")


def test_config_scrapes_the_three_services():
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert cfg["global"]["scrape_interval"] == "5s"
    assert cfg["rule_files"] == ["rules.yml"]
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in cfg["scrape_configs"]}
    assert targets == {"boardlens-producer": ["127.0.0.1:9101"], "boardlens-trainer": ["127.0.0.1:9102"],
                       "boardlens-evaluator": ["127.0.0.1:9103"]}


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load((PROM / "rules.yml").read_text())["groups"] for r in g["rules"]]


def _outside_the_catalogue(exprs: list[str]) -> set[str]:
    """Names that are neither catalogue series, recording rules of rules.yml nor Prometheus'
    own `up`."""
    records = {r["record"] for r in _rules() if "record" in r}
    return {n for e in exprs for n in M.promql_metric_names(e)} - set(M.SERIES) - records - {"up"}


def test_rules_name_only_catalogue_metrics():
    rules = _rules()
    assert not _outside_the_catalogue([r["expr"] for r in rules])
    records = [r["record"] for r in rules if "record" in r]
    assert "boardlens:producer_tokens:rate1m" in records
    assert all(re.fullmatch(r"boardlens:[a-z0-9_]+:[a-z0-9_]+", r) for r in records), records
    assert not set(records) & ({"up"} | set(M.SERIES)), "a recording rule shadows a metric or `up`"
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert {"BoardLensProducerStalled", "BoardLensTrainerRejectingMessages", "BoardLensTrainerBatchesLost",
            "BoardLensTargetDown", "BoardLensServiceAbsent"} <= alerts
    for r in rules:
        if "alert" in r:
            assert r["labels"]["severity"] in ("info", "warning", "critical"), r["alert"]
            assert r["annotations"]["summary"], r["alert"]
            text = " ".join(r["annotations"].values())
            assert not _outside_the_catalogue(re.findall(r"\bboardlens_[a-z0-9_]+", text)), r["alert"]


def test_rule_unit_tests_name_only_catalogue_metrics():
    """The input series and expressions of rules_test.yml: a renamed metric must not leave
    alerts tested against series no service exports."""
    tests = yaml.safe_load((PROM / "rules_test.yml").read_text())["tests"]
    exprs = [s["series"] for t in tests for s in t.get("input_series", [])]
    exprs += [e["expr"] for t in tests for e in t.get("promql_expr_test", [])]
    exprs += [s["labels"] for t in tests for e in t.get("promql_expr_test", []) for s in e["exp_samples"]]
    assert len(exprs) >= 10
    assert not _outside_the_catalogue(exprs)

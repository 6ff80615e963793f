"""deploy/prometheus: config and rules pass promtool, alert unit tests pass, and the rules
name only metrics the services define."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

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


def test_rules_name_only_real_metrics(service_metrics):
    groups = yaml.safe_load((PROM / "rules.yml").read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    used = {m for r in rules for m in re.findall(r"\bboardlens_[a-z0-9_]+\b(?!\()", r["expr"])}
    assert not used - service_metrics, sorted(used - service_metrics)
    records = [r["record"] for r in rules if "record" in r]
    assert "boardlens:producer_tokens:rate1m" in records
    assert all(re.fullmatch(r"boardlens:[a-z0-9_]+:[a-z0-9_]+", r) for r in records), records
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert {"BoardLensProducerStalled", "BoardLensTrainerRejectingMessages", "BoardLensTrainerBatchesLost",
            "BoardLensTargetDown", "BoardLensServiceAbsent"} <= alerts
    for r in rules:
        if "alert" in r:
            assert r["labels"]["severity"] in ("info", "warning", "critical"), r["alert"]
            assert r["annotations"]["summary"], r["alert"]

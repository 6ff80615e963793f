"""The committed Grafana dashboard is what generate.py makes, and its queries are sound.

That every query returns data from a real run is test_dashboard.py (e2e); here: the JSON is
current, well-formed for Grafana, only names metrics of the catalogue
(boardlens.services.metrics), and every query parses (promtool, when installed).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from boardlens.services import metrics as M

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"


def _generator():
    spec = importlib.util.spec_from_file_location("boardlens_grafana_generate", GRAFANA / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dash() -> dict:
    return json.loads((GRAFANA / "boardlens.json").read_text())


def _targets(dash: dict) -> list[tuple[str, dict]]:
    return [(p["title"], t) for p in dash["panels"] for t in p.get("targets", [])]


def test_committed_json_is_generated():
    gen = _generator()
    assert (GRAFANA / "boardlens.json").read_text() == gen.render(), \
        "deploy/grafana/boardlens.json is stale: run python deploy/grafana/generate.py"
    assert gen.main(["--check"]) == 0


def test_dashboard_shape(dash):
    assert dash["schemaVersion"] == 39
    assert dash["uid"] == "boardlens" and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    sae = variables["sae"]
    assert sae["query"]["query"] == f"label_values({M.TRAINER_LOSS.name}, sae)"
    assert sae["multi"] and sae["includeAll"] and sae["allValue"] == ".*"
    assert sae["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_panels_and_layout(dash):
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["type"] == "timeseries"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["fieldConfig"]["defaults"]["unit"]
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles))


def test_targets_use_the_variables(dash):
    for title, t in _targets(dash):
        expr = t["expr"]
        assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        # Multi-value "All" expands to a regex: the variable must only appear as sae=~"$sae".
        assert expr.count("$sae") + expr.count("${sae}") == expr.count('sae=~"$sae"'), f"{title}: {expr}"
        assert not re.search(r"\[\d+[smh]\]", expr.replace("[5m]", "")), \
            f"{title}: fixed window (use $__rate_interval, or 5m for sparse events): {expr}"
        leftover = re.sub(r"\$__rate_interval|\$sae", "", expr)
        assert "$" not in leftover, f"{title}: unknown variable in {expr}"


def test_every_sae_metric_is_filtered_by_the_variable(dash):
    """Series labelled by sae follow the SAE picker."""
    for title, t in _targets(dash):
        names = M.promql_metric_names(t["expr"])
        if any("sae" in M.SERIES[n].labels for n in names if n in M.SERIES):
            assert 'sae=~"$sae"' in t["expr"], f"{title}: {t['expr']}"


def test_queries_name_only_catalogue_metrics(dash):
    """Every metric a query selects is in the catalogue (histograms by _bucket/_sum/_count,
    counters by _total), or is Prometheus' own `up`."""
    used = {n: title for title, t in _targets(dash) for n in M.promql_metric_names(t["expr"])}
    unknown = {n: title for n, title in used.items() if n not in M.SERIES and n != "up"}
    assert not unknown, f"metrics outside the catalogue: {unknown}"


def test_dashboard_covers_the_main_metrics(dash, service_metrics):
    """Every family the services define shows on some panel (a new metric needs a panel)."""
    text = " ".join(t["expr"] for _, t in _targets(dash))
    base = {re.sub(r"_(bucket|sum|count)$", "", m) for m in service_metrics}
    # The standard process collector: CPU and memory have panels, the rest is for debugging.
    base -= {"process_max_fds", "process_open_fds", "process_start_time_seconds",
             "process_virtual_memory_bytes"}
    missing = sorted(m for m in base if m not in text)
    assert not missing, f"metrics without a panel: {missing}"


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool missing: run `make deps` (apt-get install -y prometheus)")
def test_queries_parse(dash, tmp_path):
    """promtool parses each query, variables substituted as Grafana would."""
    rules = [{"record": f"dashboard:query:{i}",
              "expr": t["expr"].replace("$__rate_interval", "1m").replace("$sae", ".*")}
             for i, (_, t) in enumerate(_targets(dash))]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

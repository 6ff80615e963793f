"""Every Grafana panel query and every recording rule returns data from a real run.

Starts a real Prometheus (the Debian package) with deploy/prometheus/prometheus.yml adapted
to this run (1 s scrapes, the run's metrics ports, rules.yml loaded), then a real
`boardlens up` on loopback. While the run is live it polls Prometheus: at one instant `t`
every query of deploy/grafana/boardlens.json (with `$sae` -> `.*` and
`$__rate_interval` -> 30s) must return at least one finite sample, and every recording rule
of rules.yml must have produced a series. The run is stopped as soon as that holds (the
token budget is only an upper bound), so the test takes about a minute.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "boardlens.json"
PROM_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS = "/usr/bin/prometheus"
RATE_INTERVAL = "30s"
WAIT_FOR_DATA_S = 180  # generous: the machine may be shared with a training job

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL as Prometheus gets it) for every target of the committed JSON."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = (target["expr"].replace("$__rate_interval", RATE_INTERVAL)
                    .replace("${sae}", ".*").replace("$sae", ".*"))
            out.append((panel["title"], expr))
    return out


def recording_rules() -> list[str]:
    groups = yaml.safe_load((PROM_DIR / "rules.yml").read_text())["groups"]
    return [r["record"] for g in groups for r in g["rules"] if "record" in r]


QUERIES = dashboard_queries()


def only_while_nonzero(expr: str) -> bool:
    """A series drawn only while it is non-zero (per-reason rejections): empty in a healthy run,
    so it must parse and evaluate, and its panel's total beside it must have data."""
    return expr.rstrip().endswith("> 0")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_base(n: int = 6) -> int:
    """First of n consecutive free loopback ports (what `up --base-port` takes)."""
    for _ in range(200):
        base = random.randrange(20_000, 32_000)  # below the ephemeral range (32768+)
        if all(_port_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no block of free ports")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prometheus_config(base: int) -> dict:
    """The shipped prometheus.yml, pointed at this run's metrics ports with 1 s intervals."""
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(PROM_DIR / f) for f in cfg["rule_files"]]
    ports = {"boardlens-producer": base + 3, "boardlens-trainer": base + 4, "boardlens-evaluator": base + 5}
    assert {j["job_name"] for j in cfg["scrape_configs"]} == set(ports)
    for job in cfg["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    return cfg


def _query(url: str, expr: str, at: float) -> list[dict]:
    r = requests.get(f"{url}/api/v1/query", params={"query": expr, "time": f"{at:.3f}"}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    assert body["data"]["resultType"] == "vector", f"{expr}: {body['data']['resultType']}"
    return body["data"]["result"]


def _finite(result: list[dict]) -> bool:
    return any(math.isfinite(float(s["value"][1])) for s in result)


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM, wait, then SIGKILL the process group we created for it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers (children of `up`); group = our child's pid
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def _tail(path: Path, n: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(none)"


def _start_prometheus(tmp: Path, port: int, log) -> subprocess.Popen:
    """A real Prometheus scraping the services (config in tmp), once it answers /-/ready."""
    prom = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        assert prom.poll() is None, f"prometheus exited:\n{_tail(tmp / 'prometheus.log')}"
        try:
            if requests.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200:
                return prom
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            _stop(prom, 5)
            raise AssertionError("prometheus not ready after 30 s")
        time.sleep(0.2)


def _query_until_every_panel_has_data(url: str, up: subprocess.Popen, tmp: Path, run_dir: Path) -> dict:
    """Every dashboard query and recording rule, polled while the run is live (after it, series
    go stale and rates vanish) until all have data or WAIT_FOR_DATA_S passes."""
    records = recording_rules()
    t0 = time.monotonic()
    seen: dict = {}
    while True:
        assert up.poll() is None, (
            f"`boardlens up` exited ({up.returncode}) before every panel had data; still empty: "
            f"{[e for e, r in seen.get('queries', {}).items() if not _finite(r)]}\n"
            f"up.log:\n{_tail(tmp / 'up.log')}\n"
            + "\n".join(f"{p.name}:\n{_tail(p)}" for p in sorted((run_dir / 'logs').glob('*.log'))))
        at = time.time()
        seen = {
            "at": at,
            "queries": {expr: _query(url, expr, at) for _, expr in QUERIES},
            "records": {rec: _query(url, rec, at) for rec in records},
        }
        if (all(_finite(r) for e, r in seen["queries"].items() if not only_while_nonzero(e))
                and all(seen["records"].values())):
            break
        if time.monotonic() - t0 > WAIT_FOR_DATA_S:
            break  # let the tests report exactly what is missing
        time.sleep(2)
    seen["elapsed_s"] = time.monotonic() - t0
    return seen


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """Run Prometheus + `boardlens up` until every query has data; return what was seen."""
    if not Path(PROMETHEUS).exists():
        pytest.skip(f"{PROMETHEUS} missing: run `make deps` (apt-get install -y prometheus)")
    tmp = tmp_path_factory.mktemp("dashboard")
    base, prom_port = _free_base(), _free_port()
    url = f"http://127.0.0.1:{prom_port}"
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(_prometheus_config(base)))
    prom_log, up_log = open(tmp / "prometheus.log", "w"), open(tmp / "up.log", "w")
    run_dir = tmp / "run"
    procs: list[tuple[subprocess.Popen, float]] = []
    try:
        procs.append((_start_prometheus(tmp, prom_port, prom_log), 20))

        up = subprocess.Popen(
            [sys.executable, "-m", "boardlens.services.cli", "up", "--model", "models/othello-gpt-random",
             "--tokens", "400000", "--d-sae", "256", "--batch-size", "256", "--train-games", "30",
             "--test-games", "30", "--base-port", str(base), "--run-dir", str(run_dir), "--quiet"],
            cwd=ROOT, stdout=up_log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append((up, 90))
        seen = _query_until_every_panel_has_data(url, up, tmp, run_dir)
        seen["sae_values"] = requests.get(
            f"{url}/api/v1/label/sae/values", params={"match[]": "boardlens_trainer_loss"}, timeout=10).json()
        seen["rules"] = requests.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        seen["alerts"] = requests.get(f"{url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return seen
    finally:
        for proc, grace in reversed(procs):
            _stop(proc, grace)
        prom_log.close()
        up_log.close()


def test_queries_come_from_the_dashboard():
    assert len(QUERIES) >= 30
    for title, expr in QUERIES:
        assert "$" not in expr, f"{title}: unsubstituted variable in {expr}"


@pytest.mark.parametrize("title,expr", QUERIES, ids=[f"{i:02d}-{t}" for i, (t, _) in enumerate(QUERIES)])
def test_panel_query_returns_data(live, title, expr):
    result = live["queries"][expr]
    if only_while_nonzero(expr):  # evaluated without error (_query checks); nothing is rejected here
        assert result == [], f"panel {title!r}: {expr} has series in a healthy run: {result}"
        return
    assert result, f"panel {title!r}: no series for {expr} after {live['elapsed_s']:.0f} s of the run"
    assert _finite(result), f"panel {title!r}: only NaN/Inf for {expr}: {result}"


def test_sae_variable_has_values(live):
    values = live["sae_values"]["data"]
    assert values, "label_values(boardlens_trainer_loss, sae) is empty: the SAE picker would be too"
    steps = {s["metric"]["sae"] for s in live["queries"][
        'sum by (sae) (rate(boardlens_trainer_steps_total{sae=~".*"}[30s]))']}
    assert set(values) == steps


@pytest.mark.parametrize("record", recording_rules())
def test_recording_rule_evaluates(live, record):
    assert live["records"][record], f"{record}: no series at t={live['at']:.0f}"


def test_every_rule_is_healthy(live):
    rules = [r for g in live["rules"] for r in g["rules"]]
    assert len(rules) == sum(len(g["rules"]) for g in yaml.safe_load(
        (PROM_DIR / "rules.yml").read_text())["groups"])
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad


def test_no_alert_fires_during_a_healthy_run(live):
    firing = [a["labels"] for a in live["alerts"] if a["state"] == "firing"]
    assert not firing, firing

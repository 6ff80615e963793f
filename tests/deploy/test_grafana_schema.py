"""The generated dashboard type-checks against Grafana's own published schema.

`@grafana/schema` (pinned in tests/deploy/grafana-schema/package.json, installed by
`make deps`) holds the TypeScript types Grafana generates from its dashboard schema. The
dashboard JSON is written as an object literal typed `Dashboard` and compiled with
`tsc --strict`: a missing required field, a wrong type or an unknown property fails here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "tests" / "deploy" / "grafana-schema"
TSC = PKG / "node_modules" / "typescript" / "bin" / "tsc"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not TSC.exists() or not (PKG / "node_modules" / "@grafana" / "schema").exists(),
    reason="node and @grafana/schema missing (make deps: npm ci --prefix tests/deploy/grafana-schema)")


def _tsc(source: str, tmp_path: Path) -> subprocess.CompletedProcess:
    (tmp_path / "node_modules").symlink_to(PKG / "node_modules")
    (tmp_path / "check.ts").write_text(source)
    return subprocess.run(["node", str(TSC), "--strict", "--noEmit", "--module", "nodenext", "--moduleResolution",
                           "nodenext", "--target", "es2020", "check.ts"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


def _typed(dashboard_json: str) -> str:
    return (f"import type {{ Dashboard }} from '@grafana/schema';\n"
            f"const dashboard: Dashboard = {dashboard_json};\nexport default dashboard;\n")


def test_dashboard_matches_grafana_schema(tmp_path):
    r = _tsc(_typed((ROOT / "deploy" / "grafana" / "boardlens.json").read_text()), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("variable, error", [
    ('{"name": "v", "type": "query", "current": {}}', "missing the following properties from type 'VariableOption'"),
    ('{"name": "v", "type": "query", "definition": "q"}', "'\"definition\"' does not exist"),
])
def test_the_check_catches_what_grafana_rejects(tmp_path, variable, error):
    """The two faults the dashboard once had: an empty `current` and an unknown property."""
    r = _tsc(_typed(f'{{"title": "x", "templating": {{"list": [{variable}]}}}}'), tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and error in out, out

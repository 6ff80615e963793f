"""`make deps` on a fresh machine: apt's own resolver, in simulation, accepts exactly the package
set scripts/system_deps.py would ask for where none of the tools is installed, and that set never
names a tool the machine already has (npm beside the image's Node.js broke `make test` once)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "system_deps.py"
FRESH = "prometheus,promtool,stockfish,chromium,chromedriver"  # what a new machine of ours lacks
needs_apt = pytest.mark.skipif(shutil.which("apt-get") is None, reason="Debian's apt-get is not here")


def _deps(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def _plan(missing: str) -> list[str]:
    r = _deps("--plan", "--assume-missing", missing)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_the_plan_asks_only_for_missing_tools():
    assert _plan(FRESH) == ["prometheus", "stockfish", "chromium", "chromium-driver"] + (
        ["npm"] if shutil.which("npm") is None else [])


@needs_apt
def test_apt_resolves_the_fresh_machine_set_in_simulation():
    r = _deps("--simulate", "--assume-missing", FRESH)
    assert r.returncode == 0, r.stderr
    assert "apt would install prometheus stockfish chromium chromium-driver" in r.stdout


@needs_apt
def test_npm_is_never_asked_for_beside_a_node_apt_cannot_pair_it_with():
    if shutil.which("node") is None:
        pytest.skip("no Node.js here: Debian's npm brings its own")
    r = _deps("--plan", "--assume-missing", "npm")
    probe = subprocess.run(["apt-get", "install", "--simulate", "-q", "npm"], capture_output=True, text=True)
    if probe.returncode == 0:  # a Node.js from Debian: its npm installs beside it
        assert r.returncode == 0 and r.stdout.split() == ["npm"]
    else:  # e.g. the image's NodeSource build: one line naming npm, the Node.js and apt's reason
        assert r.returncode == 1 and r.stdout == ""
        line = r.stderr.strip()
        assert "\n" not in line and "npm is missing but Node.js is installed" in line and "Conflicts" in line


@needs_apt
def test_a_set_apt_refuses_fails_with_one_line_naming_it():
    """The request that broke `make test` on a fresh machine, where it still breaks (NodeSource's Node.js)."""
    if subprocess.run(["apt-get", "install", "--simulate", "-q", "npm"], capture_output=True).returncode == 0:
        pytest.skip("Debian's npm installs here: the conflict cannot be shown")
    r = subprocess.run([sys.executable, "-c", f"""
import sys; sys.path.insert(0, {str(SCRIPT.parent)!r})
import system_deps
try:
    system_deps.simulate(["prometheus", "stockfish", "chromium", "chromium-driver", "npm"])
except system_deps.DepsError as e:
    print(e)
"""], capture_output=True, text=True, timeout=600)
    out = r.stdout.strip()
    assert out.startswith("apt cannot install prometheus stockfish chromium chromium-driver npm together: ")
    assert "\n" not in out and "Conflicts: npm" in out

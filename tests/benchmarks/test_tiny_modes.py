"""Every benchmark with a --tiny mode runs it (seconds), so the benchmarks cannot rot."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if "--tiny" in p.read_text())


def test_the_lm_training_benchmark_has_a_tiny_mode():
    assert ROOT / "benchmarks" / "lm_training.py" in TINY


@pytest.mark.parametrize("bench", TINY, ids=lambda p: p.name)
def test_tiny_mode_runs_and_prints_ratios(bench):
    out = subprocess.run([sys.executable, str(bench), "--tiny"], capture_output=True, text=True,
                         timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "baseline" in out.stdout, out.stdout

"""Every benchmark with a --tiny mode runs it (seconds), so the benchmarks cannot rot."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))
TINY = [p for p in BENCHMARKS if "--tiny" in p.read_text()]


def test_every_benchmark_has_a_tiny_mode():
    """A benchmark without --tiny would not be run here, and could rot unseen."""
    assert BENCHMARKS, "no benchmarks found"
    assert [p.name for p in TINY] == [p.name for p in BENCHMARKS], \
        f"without --tiny: {sorted({p.name for p in BENCHMARKS} - {p.name for p in TINY})}"


@pytest.mark.parametrize("bench", TINY, ids=lambda p: p.name)
def test_tiny_mode_runs_and_prints_ratios(bench):
    out = subprocess.run([sys.executable, str(bench), "--tiny"], capture_output=True, text=True,
                         timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "baseline" in out.stdout, out.stdout

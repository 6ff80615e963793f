"""scripts/gpu_board_model.py, the one command a lent GPU machine runs, at toy scale on the CPU:
calibration, a run with data workers and board heads stopped by its time budget, and the output
folder (model without heads, its log, the curve, where and how long it trained)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_board_model.py"


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_the_gpu_script_writes_a_model_and_its_curve(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--toy", "--minutes", "0.25", "--workers", "2"],
                       capture_output=True, text=True, timeout=220)
    assert r.returncode == 0, r.stdout + r.stderr + (out / "train.log").read_text()
    info = json.loads((out / "run.json").read_text())
    assert info["steps"] >= 1 and info["calibrated_steps_per_s"] > 0 and info["device"]
    curve = json.loads((out / "curve.json").read_text())
    assert curve and all(set(c["probe_reconstruction"]) == {"0", "1"} for c in curve)
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["board_heads"] == [{"layer": 0, "weight": 1.0, "anneal": 0.25}] and cfg["sae_layer"] == 1
    with safe_open(str(out / "model" / "model.safetensors"), "pt") as f:
        assert not any(k.startswith("heads") for k in f.keys())

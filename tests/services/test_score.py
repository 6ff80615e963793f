"""`boardlens score`: one SAE in our, dictionary_learning and SAELens layouts scores the same
offline; a wrong layer, width or game is a one-line error."""

import json
import subprocess
import sys

import pytest
import torch

from boardlens.sae.archs.relu import AutoEncoder
from boardlens.sae.interop import export_sae
from boardlens.sae.io import save_sae
from tests.services.helpers import model_dims

MODEL = "models/othello-gpt-random"
D, LAYER = model_dims(MODEL)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "boardlens.services.cli", "score", *args], capture_output=True,
                          text=True, timeout=240)


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("saes")
    torch.manual_seed(0)
    ae = AutoEncoder(D, 256)
    with torch.no_grad():
        ae.encoder.bias -= 0.5  # sparse codes, as a trained SAE's
    meta = {"game": "othello", "model": "othello-gpt-random", "layer": LAYER, "step": 7}
    save_sae(root / "ours", "s", ae, meta)
    export_sae(ae, "dictionary_learning", root / "dl", meta)
    export_sae(ae, "saelens", root / "sl", meta)
    save_sae(root / "layer2", "s", ae, {**meta, "layer": 2})
    save_sae(root / "chess", "s", ae, {**meta, "game": "chess"})
    save_sae(root / "narrow", "s", AutoEncoder(64, 128), meta)
    return root


def test_one_sae_in_three_layouts_scores_the_same(sae_dir, tmp_path):
    out = tmp_path / "scores.json"
    r = _cli(str(sae_dir / "ours"), str(sae_dir / "dl"), str(sae_dir / "sl"), "--model", MODEL, "--games", "16",
             "--json", str(out), "--threads", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(out.read_text())
    assert result["layer"] == LAYER and result["game"] == "othello"
    records = list(result["saes"].values())
    assert set(result["saes"]) == {"s", "dl", "sl"} and len(records) == 3
    for rec in records[1:]:  # the same function in every layout: the same numbers
        assert rec["families"] == records[0]["families"] and rec["l0"] == pytest.approx(records[0]["l0"])
        assert rec["loss"]["recovered"] == pytest.approx(records[0]["loss"]["recovered"], abs=1e-6)
    assert records[0]["step"] == 7
    assert {"linear_probe", "mlp_neurons", "random_sae-256"} <= set(result["references"])
    assert "[linear_probe]" in r.stdout and "loss rec" in r.stdout


@pytest.mark.parametrize("folder, error", [
    ("layer2", f"trained on layer 2; scoring layer {LAYER} (pass --layer)"),
    ("chess", "trained on chess games; the model plays othello"),
    ("narrow", f"input width 64, the model's residual is {D}"),
])
def test_a_mismatched_sae_is_a_one_line_error(sae_dir, folder, error):
    r = _cli(str(sae_dir / folder), "--model", MODEL, "--games", "4")
    assert r.returncode != 0 and error in r.stderr and "Traceback" not in r.stderr, r.stderr

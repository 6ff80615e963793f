"""`boardlens describe` as a user runs it: a real process, the bundled model, a saved SAE."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOOR_SAE = ROOT / "models/othello-gpt/floor/standard-4096-0.05.safetensors"


def test_describe_writes_every_latent_and_the_references(tmp_path):
    out = tmp_path / "d.json"
    r = subprocess.run([sys.executable, "-m", "boardlens.services.cli", "describe", str(FLOOR_SAE),
                        "--model", str(ROOT / "models/othello-gpt"), "--games", "40", "--faithful-latents", "2",
                        "--prefixes", "6", "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "clar>=.5" in r.stdout and "top 10 latents of standard-4096-0.05" in r.stdout
    assert "describe config" in r.stderr  # one line of resolved config
    d = json.loads(out.read_text())
    assert d["game"] == "othello" and d["layer"] == 6
    assert set(d["subjects"]) == {"standard-4096-0.05", "linear_probe", "mlp_neurons", "random_sae-4096"}
    for sub in d["subjects"].values():
        assert sub["described"] == len(sub["latents"]) > 0
        assert set(sub["summary"]) >= {"all"}
        for lat in sub["latents"][:50]:
            assert lat["description"].startswith(lat["family"])
            for k in ("f1", "clarity", "responsiveness", "purity", "prevalence"):
                assert lat[k] is None or 0.0 <= lat[k] <= 1.0
        f = sub["faithfulness"]
        assert f["scored"] <= min(f["gated"], 2)
    # the probes (an oracle whose latents are BSP detectors) describe themselves and beat chance
    probe, rand = d["subjects"]["linear_probe"], d["subjects"]["random_sae-4096"]
    own = [lat for lat in probe["latents"] if lat["f1"] > 0.5]
    assert own and sum(lat["bsp"] == lat["latent"] for lat in own) / len(own) > 0.9
    for score in ("responsiveness", "purity"):
        assert probe["summary"]["all"][score] > rand["summary"]["all"][score] + 0.2, score


def test_describe_refuses_an_sae_of_another_width(tmp_path):
    r = subprocess.run([sys.executable, "-m", "boardlens.services.cli", "describe", str(FLOOR_SAE),
                        "--model", str(ROOT / "models/chess-gpt"), "--games", "4"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode != 0 and "input width 256" in r.stderr and "Traceback" not in r.stderr

"""The committed example reports (docs/reports/sweep-<game>.html, made by docs/make_examples.py)
were made with bundled models as they are: each page names its model, layer and weights digest,
and those must be a bundled model's of that game (retrained or replaced weights fail this until
the examples are made again)."""

import json
import re
from pathlib import Path

import pytest

from boardlens.lm.formats import model_digest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs" / "reports").glob("sweep-*.html"))
SOURCE = re.compile(r"game (\w+), model ([\w.-]+), layer (\d+)(?:, weights sha256 ([0-9a-f]{12}))?")


def test_there_is_an_example_for_the_default_game():
    assert ROOT / "docs" / "reports" / "sweep-othello.html" in PAGES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_an_example_report_is_of_the_bundled_model(page):
    found = SOURCE.findall(page.read_text())
    assert found, f"{page.name} does not name the model it was made with"
    for game, model, layer, weights in found:
        bundled = ROOT / "models" / model
        where = f"{page.name} was made with {model} layer {layer} (weights {weights or 'unknown'})"
        assert (bundled / "model.safetensors").exists(), f"{where}: no such bundled model; run docs/make_examples.py {game}"
        cfg = json.loads((bundled / "config.json").read_text())
        assert (cfg["game"], cfg["sae_layer"]) == (game, int(layer)), f"{where}; run docs/make_examples.py {game}"
        assert weights == model_digest(bundled), f"{where}, not the bundled model's; run docs/make_examples.py {game}"

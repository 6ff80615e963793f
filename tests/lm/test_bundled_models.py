"""The shipped models still hold their model cards' headline figures (a retrained, truncated or
corrupted model cannot ship silently).

Each bundled `config.json` carries `headline`: the figures its card reports, measured on many
held-out games. Here they are measured again on a small fresh sample (other seeds) and must
stay above the card's figure minus a margin sized for that sample's noise.
"""

import json
from pathlib import Path

import pytest

from boardlens.lm.checkpoint import load_model
from boardlens.lm.probe import layer_reports
from boardlens.registry import GAMES

MODELS = Path(__file__).resolve().parents[2] / "models"
BUNDLED = sorted(p for p in MODELS.iterdir() if (p / "model.safetensors").exists())
MARGIN = {"legal_move_acc": 0.01, "legal_move_rate": 0.15}  # 300 games / 96 sampled prompts (3 sigma)
PROBE_MARGIN = 0.08  # probes fit on 100 games instead of 1000


def _headline(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())["headline"]


def test_every_bundled_model_declares_its_headline_figures():
    assert {p.name for p in BUNDLED} == {"othello-gpt", "othello-gpt-selfsup", "chess-gpt"}
    for folder in BUNDLED:
        h = _headline(folder)
        assert {"legality", "probe_reconstruction", "layer"} <= set(h), folder.name
        assert (folder / "MODEL_CARD.md").exists()


@pytest.mark.parametrize("folder", BUNDLED, ids=lambda p: p.name)
def test_legal_moves_hold(folder):
    model, meta = load_model(folder)
    data = GAMES[meta["game"]].lm_data()
    name, figure = next(iter(_headline(folder)["legality"].items()))
    assert name == data.score_name
    games = 300 if meta["game"] == "othello" else 96
    got = data.score(model, data.eval_set(games, 777))
    assert got >= figure - MARGIN[name], f"{folder.name}: {name} {got:.4f} < card {figure:.4f} - {MARGIN[name]}"


@pytest.mark.parametrize("folder", BUNDLED, ids=lambda p: p.name)
def test_probe_reconstruction_holds(folder):
    model, meta = load_model(folder)
    h = _headline(folder)
    assert h["layer"] == meta["sae_layer"]
    (rep,) = layer_reports(model, meta["game"], [h["layer"]], 100, 100, seed=777, mlp=False)
    for family, figure in h["probe_reconstruction"].items():
        got = rep.probe[family].reconstruction
        assert got >= figure - PROBE_MARGIN, f"{folder.name} {family}: probe reconstruction {got:.3f} < card {figure:.3f}"

"""`boardlens browse` and `boardlens steer` as a user runs them, the pages opened in headless Chromium."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chromium import in_chromium, needs_chromium

ROOT = Path(__file__).resolve().parents[2]
SAE = ROOT / "models/othello-gpt/floor/standard-4096-0.05.safetensors"
MODEL = ROOT / "models/othello-gpt"


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "boardlens.services.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browse")
    steer = _cli("steer", str(SAE), "--model", str(MODEL), "--bsp", "mine_theirs_empty E5=theirs", "--games", "30",
                 "--pairs", "16", "--steps", "10", "--no-components", "--probes", "--threads", "1", "--json", str(tmp / "s.json"))
    assert steer.returncode == 0, steer.stderr[-2000:]
    out = _cli("browse", str(SAE), "--model", str(MODEL), "--games", "30", "--pages", "6", "--faithful-latents", "1",
               "--steering", str(tmp / "s.json"), "--threads", "1", "--out", str(tmp / "b"))
    assert out.returncode == 0, out.stderr[-2000:]
    return tmp, Path(out.stdout.strip().splitlines()[-1])


def test_steer_reports_flips_kl_and_movers(browser):
    s = json.loads((browser[0] / "s.json").read_text())
    r = s["results"][0]
    assert r["bsp"] == "mine_theirs_empty E5=theirs" and r["pairs"] >= 4
    for kind in ("sae", "linear_probe"):
        for k in ("flip_before", "flip_after", "kl", "moved", "moved_described_as_target", "moved_alpha"):
            assert k in r[kind]
    assert "components" not in r
    assert 0.0 <= r["sae"]["flip_after"] <= 1.0 and r["sae"]["kl"] >= 0.0


@needs_chromium
def test_index_and_latent_pages_render_boards_without_console_errors(browser):
    tmp, index = browser
    assert index == tmp / "b" / "index.html"
    console, rows, sorted_f1 = in_chromium(
        index, "return [...document.querySelectorAll('tbody tr')].map(r => r.cells[2].textContent)",
        "document.querySelectorAll('th')[2].click(); document.querySelectorAll('th')[2].click();"
        "return [...document.querySelectorAll('tbody tr')].map(r => parseFloat(r.cells[2].textContent))")
    assert console == [], console
    data = json.loads((tmp / "b" / "latents.json").read_text())
    assert len(rows) == data["subject"]["described"] > 0
    assert sorted_f1 == sorted(sorted_f1, reverse=True)  # clicking F1 twice sorts it high to low
    pages = sorted((tmp / "b" / "latents").glob("*.html"))
    assert len(pages) == 6
    console, boards, text = in_chromium(
        pages[0], "return [...document.querySelectorAll('.board svg')].map(s => ({w: s.getBoundingClientRect().width,"
                  " discs: s.querySelectorAll('circle.disc').length}))", "return document.body.innerText")
    assert console == [], console
    assert boards and all(b["w"] > 100 and b["discs"] >= 4 for b in boards), boards  # an Othello board has >= 4 discs
    assert "clarity" in text and "Top-activating positions" in text


def test_browse_refuses_a_steering_file_of_another_sae(browser, tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text(json.dumps({"sae": "other", "results": []}))
    out = _cli("browse", str(SAE), "--model", str(MODEL), "--games", "4", "--steering", str(bad),
               "--out", str(tmp_path / "b"))
    assert out.returncode == 1 and "steered 'other'" in out.stderr and "Traceback" not in out.stderr


def test_steer_and_describe_run_on_chess(tmp_path):
    """The chess path through the CLI: a small SAE on the bundled chess model, a piece BSP."""
    from boardlens.lm.formats import load_any
    from boardlens.metrics.references import random_sae
    from boardlens.sae.io import save_sae

    _, meta = load_any(str(ROOT / "models/chess-gpt"))
    sae = save_sae(tmp_path, "tiny", random_sae(192, 64), {"arch": "relu", "game": "chess", "layer": meta["sae_layer"]})
    out = _cli("steer", str(sae), "--model", str(ROOT / "models/chess-gpt"), "--bsp", "piece f3=N", "--games", "30",
               "--pairs", "8", "--steps", "3", "--threads", "1", "--json", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads((tmp_path / "s.json").read_text())["results"][0]
    assert r["bsp"] == "piece f3=N" and r["pairs"] == 8 and {"sae", "components"} <= set(r)
    assert 0.0 <= r["sae"]["flip_after"] <= 1.0 and r["components"]["kl"] >= 0.0
    out = _cli("describe", str(sae), "--model", str(ROOT / "models/chess-gpt"), "--games", "6", "--no-references",
               "--faithful-latents", "1", "--prefixes", "2", "--threads", "1", "--json", str(tmp_path / "d.json"))
    assert out.returncode == 0, out.stderr[-2000:]
    d = json.loads((tmp_path / "d.json").read_text())["subjects"]["tiny"]
    assert d["latents_total"] == 64 and {lat["family"] for lat in d["latents"]} <= {
        "piece", "threat", "legal_moves", "check", "can_check_next", "has_queen", "can_capture_queen",
        "has_bishop_pair", "castling_any", "castling_kingside", "castling_queenside", "any_fork", "pin",
        "has_legal_en_passant", "ambiguous_moves"}

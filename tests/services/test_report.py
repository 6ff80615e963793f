"""`boardlens report` from a real short run (3 SAEs of 3 trainer kinds on the bundled model),
opened in headless Chromium: no console errors, every figure displayed."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chromium import in_chromium, needs_chromium


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "boardlens.services.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "run"
    out = _cli("up", "--tokens", "60000", "--saes", "standard", "--saes", "topk", "--saes", "gated", "--d-sae", "128",
               "--batch-size", "256", "--train-games", "20", "--test-games", "20", "--run-dir", str(run), "--quiet",
               timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    return run


def _open(page: Path) -> tuple[list[dict], list[dict], str]:
    """(console messages, each <img>'s load state, the page text) as Chromium sees them."""
    console, images, text = in_chromium(page, (
        "return [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,"
        " shown: i.getBoundingClientRect().width}))"), "return document.body.innerText")
    return console, images, text


@needs_chromium
def test_the_report_of_a_real_run_loads_in_chromium_with_every_figure(run):
    out = _cli("report", str(run), "--out", str(run / "report"))
    assert out.returncode == 0, out.stdout + out.stderr
    page = Path(out.stdout.strip().splitlines()[-1])
    assert page == run / "report" / "index.html"
    pngs = sorted((run / "report" / "figures").glob("*.png"))
    assert [p.name for p in pngs] == ["curves-run.png", "pareto-average.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    console, images, text = _open(page)
    assert console == [], console
    assert len(images) == 2 and all(i["complete"] and i["width"] > 500 and i["shown"] > 0 for i in images), images
    final = json.loads((run / "final_metrics.json").read_text())
    for name in (*final["saes"], *(f"[{r}]" for r in final["references"])):
        assert name in text  # the final table and the per-family tables
    assert "linear_probe" in text and "mine_theirs_empty" in text and "legal_moves" in text


def test_a_score_file_gives_the_pareto_figure_and_tables_only(run, tmp_path):
    scores = tmp_path / "scores.json"
    shutil.copy(run / "final_metrics.json", scores)  # `boardlens score` writes this layout
    out = _cli("report", str(scores), "--out", str(tmp_path / "r"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert [p.name for p in (tmp_path / "r" / "figures").glob("*.png")] == ["pareto-average.png"]
    html = (tmp_path / "r" / "index.html").read_text()
    assert html.count("<img") == 1 and "standard-128-0.05" in html


def test_what_is_not_a_run_is_a_one_line_error(tmp_path):
    out = _cli("report", str(tmp_path))
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "no metrics.jsonl" in out.stderr
    (tmp_path / "metrics.jsonl").write_text("not json\n{\"torn\": ")
    out = _cli("report", str(tmp_path))
    assert out.returncode == 1 and "no SAE evaluations yet" in out.stderr, out.stderr

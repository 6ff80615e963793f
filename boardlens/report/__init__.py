"""`boardlens report`: one self-contained HTML page (figures inlined as PNG) of one or more runs.

    boardlens report runs/sweep-a runs/sweep-b --out report/

Writes `<out>/index.html` (opens anywhere: no scripts, no external files) and each figure as
`<out>/figures/*.png` for papers. Sections: the final table (every SAE's newest evaluation
and the references), the Pareto figures per family group, each source's training curves, and
per-family tables with every reconstruction variant.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from boardlens.atomic import write_atomic, write_text
from boardlens.report import figures
from boardlens.report.page import render
from boardlens.report.runs import ReportError, Source, load_source

__all__ = ["ReportError", "build_report"]

log = logging.getLogger("boardlens")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "figure"


def build_report(paths: list[str], out: str | Path, title: str | None = None) -> Path:
    """Read the sources, draw the figures, write the page; returns the page's path."""
    if not paths:
        raise ReportError("no run folders given")
    sources: list[Source] = [load_source(p) for p in paths]
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    groups = sources[0].groups
    images: dict[str, tuple[str, bytes]] = {}  # figure id -> (caption, png)
    for g in groups:
        images[f"pareto-{g}"] = (f"Pareto frontiers, {g} of the families", figures.png(figures.pareto(sources, g)))
    for s in sources:
        if any(len(h.records) > 1 for h in s.saes.values()):
            images[f"curves-{s.name}"] = (f"{s.name}: each SAE over training ({groups[0]} of the families)",
                                          figures.png(figures.curves(s, groups[0])))
    for key, (_, data) in images.items():
        write_atomic(out / "figures" / f"{_slug(key)}.png", lambda p, d=data: p.write_bytes(d))
    page = write_text(out / "index.html", render(sources, groups, images, title))
    log.info("report: %s (%d sources, %d SAEs, %d figures)", page, len(sources),
             sum(len(s.saes) for s in sources), len(images))
    return page

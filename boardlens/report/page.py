"""The report's HTML: plain tables and inlined PNGs, no scripts, no external files."""

from __future__ import annotations

import base64
import time
from html import escape
from typing import NamedTuple

from boardlens.report.runs import SaeHistory, Source

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f2f2f2; } td.name, th.name { text-align: left; }
tr.reference td { background: #fafafa; color: #555; font-style: italic; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; } p.note { font-size: 13px; color: #555; max-width: 70em; }
"""

NOTE = """Every SAE figure stands beside its floors and ceiling, measured on the same evaluation games
with the same code: an untrained random SAE of the same width and an SAE trained on the
random-init copy of the model (floors: what a dictionary gets without learning, or without a
world model to learn from), and one logistic probe per board-state property on the same
activations (ceiling: what the layer linearly encodes). An SAE near its floor has found
nothing of the board, whatever its absolute score."""


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return escape(str(v))


def _tokens(h: SaeHistory) -> str:
    t = h.tokens(h.final)
    return "&ndash;" if t is None else f"{t / 1e6:.2f}M"


class _Line(NamedTuple):
    """One table line: an SAE's newest evaluation or a reference's record."""

    label: str  # SAE name or [reference]
    kind: str  # trainer kind, or "reference"
    source: str
    record: dict
    history: SaeHistory | None  # None for a reference


def _lines(sources: list[Source]) -> list[_Line]:
    """Every SAE of every source, then the first source's references (the Pareto lines' too)."""
    out = [_Line(h.name, h.kind, s.name, h.final, h) for s in sources for h in s.saes.values()]
    out += [_Line(f"[{name}]", "reference", sources[0].name, r, None) for name, r in sorted(sources[0].references.items())]
    return out


def _line_row(line: _Line, cells: list[str], label: str | None = None) -> str:
    label = escape(label or line.label)
    if line.history is None:
        return _row([label, *cells], "reference", title=line.record.get("detail", ""))
    return _row([label, *cells])


def _final_table(sources: list[Source], groups: list[str]) -> str:
    several = len(sources) > 1
    head = ["SAE", "kind", *(["source"] if several else []), "step", "tokens", "L0", "FVE", "loss rec", "KL"]
    head += [f"{g} {m}" for g in groups for m in ("cov", "rec")]
    rows = []
    for line in _lines(sources):
        r, loss, h = line.record, line.record.get("loss") or {}, line.history
        cells = [escape(line.kind), *([escape(line.source)] if several else []),
                 fmt(r.get("step")) if h else "&ndash;", _tokens(h) if h else "&ndash;", fmt(r.get("l0"), 1), fmt(r.get("var_explained")), fmt(loss.get("recovered")), fmt(loss.get("kl"))]
        cells += [fmt((r["averages"].get(g) or {}).get(m)) for g in groups for m in ("coverage", "reconstruction")]
        rows.append(_line_row(line, cells))
    return _table(head, rows)


def _row(cells: list[str], cls: str = "", title: str = "") -> str:
    attrs = (f' class="{cls}"' if cls else "") + (f' title="{escape(title)}"' if title else "")
    return f"<tr{attrs}>" + "".join(f'<td{" class=name" if i == 0 else ""}>{c}</td>'
                                    for i, c in enumerate(cells)) + "</tr>"


def _table(head: list[str], rows: list[str]) -> str:
    ths = "".join(f'<th{" class=name" if i == 0 else ""}>{escape(h)}</th>' for i, h in enumerate(head))
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


FAMILY_COLUMNS = (("coverage", "coverage", 3), ("at t", "coverage_threshold", 1),
                  ("reconstruction", "reconstruction", 3), ("at t", "reconstruction_threshold", 1),
                  ("per square", "reconstruction_per_square", 3), ("held-out t", "reconstruction_heldout", 3),
                  ("t = 1.0 slot", "reconstruction_last", 3), ("HPC latents", "hpc_latents", 0),
                  ("BSPs with an HPC", "bsps_with_hpc", 0), ("BSPs", "num_bsps", 0))


def _family_tables(sources: list[Source]) -> str:
    families = list(next(iter(sources[0].saes.values())).final["families"])
    lines = _lines(sources)
    several = len(sources) > 1
    out = []
    for fam in families:
        rows = [_line_row(line, [fmt(line.record["families"][fam].get(k), d) for _, k, d in FAMILY_COLUMNS],
                          f"{line.source}/{line.label}" if several and line.history else None)
                for line in lines if fam in line.record["families"]]
        out.append(f"<h3>{escape(fam)}</h3>" + _table(["SAE / [reference]"] + [c for c, _, _ in FAMILY_COLUMNS], rows))
    return "".join(out)


def _describe(sources: list[Source]) -> str:
    items = []
    for s in sources:
        games = next(iter(s.saes.values())).final.get("games") or {}
        meta = ", ".join(f"{k} {escape(str(v))}" for k, v in s.meta.items())
        items.append(f"<li><code>{escape(str(s.path))}</code>: {len(s.saes)} SAEs"
                     + (f", {meta}" if meta else "")
                     + (f"; eval set {games.get('train', '?')} train + {games.get('test', '?')} test games"
                        if isinstance(games, dict) and games else "") + "</li>")
    return "<ul>" + "".join(items) + "</ul>"


def render(sources: list[Source], groups: list[str], images: dict[str, tuple[str, bytes]],
           title: str | None = None) -> str:
    title = title or "BoardLens report: " + ", ".join(s.name for s in sources)
    figs = "".join(
        f'<figure id="{escape(key)}"><img alt="{escape(caption)}" '
        f'src="data:image/png;base64,{base64.b64encode(data).decode()}"><figcaption>{escape(caption)}</figcaption>'
        "</figure>" for key, (caption, data) in images.items())
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
            f"<p class=note>Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
            f"<code>boardlens report</code> from:</p>{_describe(sources)}"
            f"<h2>Final evaluations</h2><p class=note>{NOTE} References in italics (hover for what exactly was "
            f"scored); coverage and reconstruction are F1 in [0, 1], averaged over each group's families.</p>"
            f"{_final_table(sources, groups)}<h2>Figures</h2>{figs}"
            f"<h2>Per family</h2><p class=note>Every reconstruction variant (see "
            f"<code>boardlens.metrics.supervised.FamilyScore</code>): per class with the threshold picked on "
            f"the test split (upstream's), per square, with the threshold picked on the train split (held "
            f"out), and upstream's t = 1.0 slot.</p>{_family_tables(sources)}</body></html>\n")

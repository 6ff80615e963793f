"""The feature browser: static HTML pages of described latents, boards drawn as inline SVG.

    boardlens browse SAE --model models/othello-gpt --out browser/

index.html lists every described latent (a table sortable by any column, plain JavaScript,
no network); latents/<j>.html shows one latent: its description and scores, a histogram of
its nonzero activations on the test split, its top-activating positions drawn as boards (the
described square outlined; drawn by the game, `Game.draw_board`: Othello from its replay,
chess by python-chess's SVG, any other game as a plain grid of its board family), and
its faithfulness and steering results when they were computed. Pages are written for the
`pages` latents with the best description F1 (every latent is in the index).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import torch

from boardlens.atomic import write_text

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
th{cursor:pointer;background:#f3f3f3;position:sticky;top:0}td.l,th.l{text-align:left}
.boards{display:flex;flex-wrap:wrap;gap:14px}.board{font-size:12px;text-align:center}
.scores td{text-align:left}
"""

SORT_JS = """
document.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const rows = [...body.rows];
  const asc = th.dataset.asc !== '1';
  th.dataset.asc = asc ? '1' : '0';
  const key = r => { const t = r.cells[col].dataset.v ?? r.cells[col].textContent;
                     const n = parseFloat(t); return isNaN(n) ? t : n; };
  rows.sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); });
  rows.forEach(r => body.appendChild(r));
}));
"""


def histogram_svg(values: torch.Tensor, bins: int = 24, width: int = 360, height: int = 120) -> str:
    """Bars of the nonzero activations' histogram (with the count of zeros in the caption)."""
    nz = values[values > 0]
    if nz.numel() == 0:
        return "<p>never active on the test split</p>"
    counts = torch.histc(nz, bins=bins, min=0.0, max=float(nz.max()))
    top = float(counts.max())
    bw = width / bins
    bars = "".join(f'<rect x="{i * bw:.1f}" y="{height - c / top * (height - 4):.1f}" width="{bw - 1:.1f}" '
                   f'height="{c / top * (height - 4):.1f}" fill="#1976d2"/>' for i, c in enumerate(counts.tolist()))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="hist" width="{width}" height="{height + 14}">{bars}'
            f'<text x="0" y="{height + 12}" font-size="10">0</text><text x="{width}" y="{height + 12}" '
            f'font-size="10" text-anchor="end">{float(nz.max()):.3g}</text></svg>'
            f"<p>{nz.numel()} active of {values.numel()} test positions (zeros not drawn)</p>")


COLUMNS = ("f1", "precision", "recall", "clarity", "clarity_labelled", "responsiveness", "purity",
           "responsiveness_population", "purity_population", "prevalence", "max_activation")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def index_page(record: dict, meta: dict, pages: set[int]) -> str:
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    rows = []
    for r in sorted(record["latents"], key=lambda r: -(r["f1"] or 0)):  # best described first
        j = r["latent"]
        link = f'<a href="latents/{j}.html">{j}</a>' if j in pages else str(j)
        faith = r.get("faithfulness", {}).get("score")
        cells = "".join(f"<td>{_fmt(r.get(c))}</td>" for c in COLUMNS)
        rows.append(f'<tr><td data-v="{j}">{link}</td><td class="l">{html.escape(r["description"])}</td>{cells}'
                    f"<td>{_fmt(faith)}</td></tr>")
    s = record["summary"].get("all", {})
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(record['name'])} latents</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(record['name'])}</h1>"
            f"<p>{html.escape(meta['model'])}, {meta['game']}, block {meta['layer']}, {meta['games']} + "
            f"{meta['games']} games (seed {meta['seed']}). {record['described']} of {record['latents_total']} "
            f"latents described (best description F1 first); mean clarity {_fmt(s.get('clarity'))}, responsiveness "
            f"{_fmt(s.get('responsiveness'))}, purity {_fmt(s.get('purity'))}. Click a header to sort.</p>"
            f"<table><thead><tr><th>latent</th><th class='l'>description</th>{head}<th>faithfulness</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table><script>{SORT_JS}</script></body></html>")


def latent_page(record: dict, lat: dict, boards_html: str, hist: str, steering: dict | None) -> str:
    rows = "".join(f"<tr><th class='l'>{c}</th><td>{_fmt(lat.get(c))}</td></tr>" for c in COLUMNS)
    faith = lat.get("faithfulness")
    if faith:
        rates = ", ".join(f"{r:.2f}" for r in faith["rates"])
        rows += (f"<tr><th class='l'>faithfulness</th><td>{_fmt(faith['score'])} (R_k {rates} over "
                 f"{faith['prefixes']} prefixes; graded {_fmt(faith.get('graded'))})</td></tr>")
    steer = ""
    if steering:
        steer = (f"<h2>Steering (activation scaling on {html.escape(steering['bsp'])})</h2><p>held-out flip rate "
                 f"{steering['flip_before']:.2f} -&gt; {steering['flip_after']:.2f}, KL {steering['kl']:.3f} nats; "
                 f"this latent's alpha {steering['alpha']:.2f}</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>latent {lat['latent']}</title>"
            f"<style>{STYLE}</style></head><body><p><a href='../index.html'>all latents</a></p>"
            f"<h1>{html.escape(record['name'])} latent {lat['latent']}: {html.escape(lat['description'])}</h1>"
            f"<table class='scores'>{rows}</table><h2>Activations</h2>{hist}<h2>Top-activating positions</h2>"
            f"<div class='boards'>{boards_html}</div>{steer}</body></html>")


def write_browser(out: str | Path, record: dict, meta: dict, test_codes, prefixes: list[torch.Tensor],
                  game: str, families, board_labels: torch.Tensor, pages: int = 200, top: int = 6,
                  steering: dict | None = None) -> Path:
    """Write index.html and a page for each of the `pages` best-described latents; returns index.html.

    test_codes: `Codes` of the test split's labelled positions; prefixes: the token prefix of
    each of those positions (`report.test_prefixes`); board_labels: (positions, num_bsps) bool
    labels of the first (board) family there; steering: {latent: {bsp, flip_before,
    flip_after, kl, alpha}} for latents with a steering result."""
    from boardlens.interpret.describe import BSPIndex
    from boardlens.interpret.fade import column_blocks
    from boardlens.registry import GAMES

    out = Path(out)
    (out / "latents").mkdir(parents=True, exist_ok=True)
    the_game = GAMES[game]
    index = BSPIndex(the_game, families)
    chosen = sorted(record["latents"], key=lambda r: -(r["f1"] or 0))[:pages]
    by_latent = {r["latent"]: r for r in chosen}
    wanted = sorted(by_latent)
    for c0, c1, acts in column_blocks(test_codes, 256):
        for j in [j for j in wanted if c0 <= j < c1]:
            lat = by_latent[j]
            col = acts[:, j - c0]
            fam, i = index.locate(lat["bsp"])
            cell = fam.bsp(i)[0] if fam.shape != (1, 1) else None
            boards = []
            for r in torch.argsort(col, descending=True)[:top].tolist():
                if col[r] <= 0:
                    break
                svg, caption = the_game.draw_board(prefixes[r], cell, board_labels[r])
                boards.append(f"<div class='board'>{svg}<br>activation {float(col[r]):.3g}<br>{caption}</div>")
            write_text(out / "latents" / f"{j}.html",
                       latent_page(record, lat, "".join(boards), histogram_svg(col), (steering or {}).get(j)))
    page = out / "index.html"
    write_text(page, index_page(record, meta, set(wanted)))
    write_text(out / "latents.json", json.dumps({**meta, "subject": record}, indent=1))
    return page

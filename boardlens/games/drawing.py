"""The plain board drawing every game gets (`Game.draw_board`'s default): a grid of its board
family's shape, each cell showing the class that holds there, from the position's labels."""

from __future__ import annotations

import html

import torch

from boardlens.labels import Family

CELL = 40  # px per cell: room for a 6-letter class name


def grid_svg(family: Family, bsps: torch.Tensor, outline: int | None = None) -> str:
    """family: the board family; bsps: its (num_bsps,) bool labels at one position; the class
    that holds in each cell is written in it (masked classes, e.g. 'empty', leave it blank)."""
    rows, cols = family.shape
    width, height = cols * CELL + 2, rows * CELL + 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">', f'<rect width="{width}" height="{height}" fill="#fafafa"/>']
    holds = {}
    for b in torch.as_tensor(bsps).nonzero().flatten().tolist():
        cell, cls = family.bsp(b)
        holds[cell] = family.class_names[cls] if family.class_names else str(cls)
    for cell in range(rows * cols):
        r, c = divmod(cell, cols)
        x, y = 1 + c * CELL, 1 + r * CELL
        stroke = 'stroke="#ffb300" stroke-width="3"' if cell == outline else 'stroke="#888"'
        parts.append(f'<rect class="cell" x="{x}" y="{y}" width="{CELL}" height="{CELL}" fill="none" {stroke}/>')
        if cell in holds:
            parts.append(f'<text x="{x + CELL / 2}" y="{y + CELL / 2 + 4}" font-size="10" text-anchor="middle">'
                         f"{html.escape(holds[cell][:6])}</text>")
    parts.append("</svg>")
    return "".join(parts)

"""Othello boards as inline SVG for the feature browser (`Game.draw_board`)."""

from __future__ import annotations

import torch

CELL = 28  # px per square


def othello_svg(black: int, white: int, outline: int | None = None, last: int | None = None) -> str:
    """An 8x8 Othello board (rows A-H top to bottom, columns 0-7 as OthelloGPT names squares)."""
    size = 8 * CELL + 16
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 {size} {size}">',
             f'<rect x="0" y="0" width="{size}" height="{size}" fill="#fff"/>',
             f'<rect x="16" y="16" width="{8 * CELL}" height="{8 * CELL}" fill="#2e7d32"/>']
    for i in range(8):
        parts.append(f'<text x="{16 + i * CELL + CELL // 2}" y="12" font-size="10" text-anchor="middle">{i}</text>')
        parts.append(f'<text x="6" y="{16 + i * CELL + CELL // 2 + 4}" font-size="10" text-anchor="middle">'
                     f'{"ABCDEFGH"[i]}</text>')
    for sq in range(64):
        r, c = divmod(sq, 8)
        x, y = 16 + c * CELL, 16 + r * CELL
        parts.append(f'<rect x="{x}" y="{y}" width="{CELL}" height="{CELL}" fill="none" stroke="#1b5e20"/>')
        bit = 1 << sq
        if black & bit or white & bit:
            fill = "#111" if black & bit else "#f5f5f5"
            parts.append(f'<circle class="disc" cx="{x + CELL / 2}" cy="{y + CELL / 2}" r="{CELL / 2 - 3}" '
                         f'fill="{fill}" stroke="#000"/>')
        if sq == last:
            parts.append(f'<circle cx="{x + CELL / 2}" cy="{y + CELL / 2}" r="3" fill="#e53935"/>')
    if outline is not None:
        r, c = divmod(outline, 8)
        parts.append(f'<rect x="{16 + c * CELL + 1}" y="{16 + r * CELL + 1}" width="{CELL - 2}" height="{CELL - 2}" '
                     f'fill="none" stroke="#ffb300" stroke-width="3"/>')
    parts.append("</svg>")
    return "".join(parts)


def draw_board(tokens: torch.Tensor, cell: int | None) -> tuple[str, str]:
    """(SVG of the position after `tokens` from the game's replay, a caption), `cell` outlined."""
    from boardlens.games.othello import tokenizer
    from boardlens.games.othello.engine import BLACK, replay

    squares = tokenizer.decode(tokens.numpy())
    rec = replay(squares[None, :])
    i = tokens.numel() - 1
    side = int(rec.to_move[0, i])
    caption = f"after move {i + 1} ({tokenizer.square_name(int(squares[-1]))}); " + (
        "game over" if side < 0 else f"{'black' if side == BLACK else 'white'} to move (mine)")
    return othello_svg(int(rec.black[0, i]), int(rec.white[0, i]), cell, int(squares[-1])), caption

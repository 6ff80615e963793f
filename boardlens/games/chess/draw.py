"""Chess boards for the feature browser (`Game.draw_board`): python-chess's SVG."""

from __future__ import annotations

import html

import torch


def draw_board(tokens: torch.Tensor, cell: int | None) -> tuple[str, str]:
    """(SVG of the position after `tokens`, the transcript's end as caption), `cell` filled."""
    import chess.svg

    from boardlens.games.chess import tokenizer
    from boardlens.games.chess.transcripts import parse_transcript, replay

    text = tokenizer.decode(tokens.numpy())
    board = replay(parse_transcript(text)[0])[-1]
    fill = {cell: "#ffb300aa"} if cell is not None else {}
    return chess.svg.board(board, size=240, fill=fill), html.escape(text[-40:])

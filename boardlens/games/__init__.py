"""Games: rules, tokenizers and board-state labellers."""

from __future__ import annotations

from boardlens.labels import Family

GAMES = ("othello", "chess")


def families(game: str) -> tuple[Family, ...]:
    """The BSP families evaluated for `game`."""
    if game == "othello":
        from boardlens.games.othello.labels import FAMILIES

        return FAMILIES
    if game == "chess":
        from boardlens.games.chess.families import FAMILIES as CHESS_FAMILIES

        return CHESS_FAMILIES
    raise ValueError(f"unknown game {game!r}; known: {GAMES}")

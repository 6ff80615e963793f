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


def family_groups(game: str) -> dict[str, tuple[str, ...]]:
    """Averages the evaluator reports beside the families: {group name: member families}.

    'average' is every family; chess adds 'strategy_average' over its 14 strategy families,
    the paper's summary of them.
    """
    names = tuple(f.name for f in families(game))
    groups = {"average": names}
    if game == "chess":
        groups["strategy_average"] = tuple(n for n in names if n != "piece")
    return groups

"""Labelled games: what the producer streams, for any game.

    tokens     (G, T) int64  model inputs (padded after `lengths`)
    lengths    (G,)   int16  valid tokens per game
    label_pos  (G, P) int16  token index of each labelled position, -1 = none
    labels     {family: (G, P, R, C) int8} board-state values at those positions

Othello labels every position (P = T = 59); chess labels the first 20 '.' characters of each
256-character game (P = 20, T = 256).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class LabelledGames(NamedTuple):
    tokens: np.ndarray
    lengths: np.ndarray
    label_pos: np.ndarray
    labels: dict[str, np.ndarray]

    def __len__(self) -> int:  # type: ignore[override]  (games, not tuple fields)
        return int(self.tokens.shape[0])


def concat(parts: list[LabelledGames]) -> LabelledGames:
    """Stack the games of several parts (same T, P and families) into one."""
    return LabelledGames(
        np.concatenate([p.tokens for p in parts]), np.concatenate([p.lengths for p in parts]),
        np.concatenate([p.label_pos for p in parts]),
        {k: np.concatenate([p.labels[k] for p in parts]) for k in parts[0].labels},
    )

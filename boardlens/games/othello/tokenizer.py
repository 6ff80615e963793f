"""OthelloGPT's 61-token vocabulary: 0 = pass/pad, 1..60 = squares skipping the centre four.

Squares are 0..63 row-major; 27, 28, 35, 36 (d4 e4 d5 e5) are occupied at the start and so
never played. The model sees the first 59 moves of a game (the 60th is never an input).
"""

from __future__ import annotations

import numpy as np

VOCAB_SIZE = 61
PAD = 0
CONTEXT = 59
CENTRE = (27, 28, 35, 36)
PLAYABLE = np.array([s for s in range(64) if s not in CENTRE], dtype=np.int64)  # token t-1 -> square
_SQUARE_TO_TOKEN = np.full(65, -1, dtype=np.int64)  # index 64 holds the pad square (-1)
_SQUARE_TO_TOKEN[PLAYABLE] = np.arange(1, VOCAB_SIZE)
_SQUARE_TO_TOKEN[64] = PAD
_TOKEN_TO_SQUARE = np.concatenate([[-1], PLAYABLE])


def encode(moves: np.ndarray) -> np.ndarray:
    """Squares (..., n) int, -1 = no move -> tokens (..., n) int64. Centre squares are an error."""
    moves = np.asarray(moves, dtype=np.int64)
    if moves.size and (moves.min() < -1 or moves.max() > 63):
        raise ValueError("squares must be in -1..63")
    tokens = _SQUARE_TO_TOKEN[np.where(moves < 0, 64, moves)]
    if (tokens < 0).any():
        raise ValueError(f"centre squares {CENTRE} are never played")
    return tokens


def decode(tokens: np.ndarray) -> np.ndarray:
    """Tokens (..., n) -> squares (..., n) int64, -1 for pad."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= VOCAB_SIZE):
        raise ValueError(f"tokens must be in 0..{VOCAB_SIZE - 1}")
    return _TOKEN_TO_SQUARE[tokens]


def square_name(square: int) -> str:
    """0 -> 'A0' style names used by OthelloGPT papers: row letter, column digit."""
    return "ABCDEFGH"[square // 8] + str(square % 8)

"""Othello board-state families, computed from a `GameRecord` (no extra game replay).

Convention (differs from upstream, which flips mine/theirs by token parity and so ignores
passes): at position i (the state after move i) "mine" is the side that actually moves next,
passes resolved by the rules. When the game is over nobody moves; we then use the side that
did not make the last move (passes included: after a pass the same side moves twice, so
parity would name the wrong one). Both families are (8, 8) per position.

- `mine_theirs_empty`: class 0 empty (masked), 1 mine, 2 theirs -> 128 BSPs.
- `legal_moves`: 1 where the side to move has a legal move (binary, one class) -> 64 BSPs.
"""

from __future__ import annotations

import numpy as np

from boardlens.games.othello.engine import BLACK, GAME_OVER, GameRecord, bits_to_bool
from boardlens.labels import Family

EMPTY, MINE, THEIRS = 0, 1, 2

FAMILIES = (
    Family("mine_theirs_empty", shape=(8, 8), num_classes=3, masked_classes=(EMPTY,),
           class_names=("empty", "mine", "theirs")),
    Family("legal_moves", shape=(8, 8), num_classes=2, masked_classes=(0,)),
)


def label_games(rec: GameRecord, num_positions: int) -> dict[str, np.ndarray]:
    """Labels at positions 0..num_positions-1: {family: (G, P, 8, 8) int8}.

    Positions past a game's end get the final state (they are masked out by `lengths`).
    Work stays on (G, P) uint64 bitboards until one unpack per output, which keeps the
    labeller several times faster than the LM forward it feeds.
    """
    P = num_positions
    G = rec.black.shape[0]
    # Freeze positions after the end at the final state: gather on the (G, P) bitboards.
    last = np.maximum(rec.lengths.astype(np.int64) - 1, 0)
    idx = np.minimum(np.arange(P)[None, :], last[:, None])  # (G, P)
    rows = np.arange(G)[:, None]
    black, white = rec.black[rows, idx], rec.white[rows, idx]
    mover = rec.to_move[rows, idx]
    # Over: the side that did not make the last move. Move i was made by whoever was to move
    # after move i - 1 (black for move 0): passes are resolved there, unlike by parity.
    made_last = np.where(idx == 0, BLACK, rec.to_move[rows, np.maximum(idx - 1, 0)])
    mover = np.where(mover == GAME_OVER, 1 - made_last, mover)
    mine = np.where(mover == BLACK, black, white)
    theirs = np.where(mover == BLACK, white, black)
    state = bits_to_bool(mine).view(np.int8) * np.int8(MINE) + bits_to_bool(theirs).view(np.int8) * np.int8(THEIRS)
    legal = bits_to_bool(rec.legal[rows, idx]).view(np.int8)
    return {
        "mine_theirs_empty": state.reshape(G, P, 8, 8),
        "legal_moves": legal.reshape(G, P, 8, 8),
    }

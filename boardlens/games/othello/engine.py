"""Vectorised Othello engine on 64-bit bitboards, one numpy lane per game.

Every game in a batch advances one half-move per step, so a batch of G games costs ~60
steps of a few dozen numpy ops on length-G arrays, whatever G is (a plain Python engine
does ~330 games/s here; this one does tens of thousands, see benchmarks/othello_engine.py).

Squares are numbered 0..63 row-major (square = 8 * row + col). Bit s of a bitboard is
square s. Black moves first; the start position has white on 27 and 36, black on 28 and 35.
A player with no legal move passes; the game ends when neither can move. Passes are not
moves: the move list only holds squares, as in the synthetic OthelloGPT data set.

    python -c "from boardlens.games.othello.engine import play_random; print(play_random(4, seed=0).lengths)"
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MAX_MOVES = 60  # 64 squares minus the 4 occupied at the start
BLACK, WHITE = 0, 1
GAME_OVER = -1

_U = np.uint64
_FULL = _U(0xFFFFFFFFFFFFFFFF)
_NOT_COL0 = _U(0xFEFEFEFEFEFEFEFE)  # clears column 0 (after a shift that moves +1 column)
_NOT_COL7 = _U(0x7F7F7F7F7F7F7F7F)  # clears column 7 (after a shift that moves -1 column)
START_BLACK = _U((1 << 28) | (1 << 35))
START_WHITE = _U((1 << 27) | (1 << 36))

# (shift, left?, mask applied after the shift): the 8 compass directions on the bitboard.
_DIRECTIONS = (
    (1, True, _NOT_COL0),  # east  (+1)
    (1, False, _NOT_COL7),  # west  (-1)
    (8, True, _FULL),  # south (+8)
    (8, False, _FULL),  # north (-8)
    (9, True, _NOT_COL0),  # south-east (+9)
    (7, True, _NOT_COL7),  # south-west (+7)
    (7, False, _NOT_COL0),  # north-east (-7)
    (9, False, _NOT_COL7),  # north-west (-9)
)


def _shift(x: np.ndarray, n: int, left: bool, mask: np.uint64) -> np.ndarray:
    s = _U(n)
    return (np.left_shift(x, s) if left else np.right_shift(x, s)) & mask


def legal_moves(me: np.ndarray, opp: np.ndarray) -> np.ndarray:
    """Bitboard of legal moves for the side owning `me`. (G,) uint64 -> (G,) uint64."""
    empty = ~(me | opp)
    moves = np.zeros_like(me)
    for n, left, mask in _DIRECTIONS:
        x = _shift(me, n, left, mask) & opp
        for _ in range(5):  # a line of opponent stones is at most 6 long
            x |= _shift(x, n, left, mask) & opp
        moves |= _shift(x, n, left, mask) & empty
    return moves


def flips(me: np.ndarray, opp: np.ndarray, move: np.ndarray) -> np.ndarray:
    """Opponent stones flipped when `me` plays the single-bit bitboard `move`. (G,) -> (G,)."""
    out = np.zeros_like(me)
    for n, left, mask in _DIRECTIONS:
        x = _shift(move, n, left, mask) & opp
        for _ in range(5):
            x |= _shift(x, n, left, mask) & opp
        closed = (_shift(x, n, left, mask) & me) != 0
        out |= np.where(closed, x, _U(0))
    return out


def bits_to_bool(boards: np.ndarray) -> np.ndarray:
    """(...,) uint64 bitboards -> (..., 64) bool, index s = square s."""
    b = np.ascontiguousarray(boards, dtype="<u8")
    bits = np.unpackbits(b.view(np.uint8).reshape(*b.shape, 8), axis=-1, bitorder="little")
    return bits.view(bool)  # unpackbits gives 0/1 uint8: same bytes as bool, no copy


def popcount(boards: np.ndarray) -> np.ndarray:
    return bits_to_bool(boards).sum(-1)


class GameRecord(NamedTuple):
    """A batch of G finished games; move i (0-based) is the state after that move."""

    moves: np.ndarray  # (G, 60) int8 square of each move, -1 after the game ended
    lengths: np.ndarray  # (G,) int16 number of moves played
    black: np.ndarray  # (G, 60) uint64 black stones after move i
    white: np.ndarray  # (G, 60) uint64 white stones after move i
    to_move: np.ndarray  # (G, 60) int8 who moves after move i (passes resolved), -1 = over
    legal: np.ndarray  # (G, 60) uint64 legal moves of `to_move` after move i (0 if over)


def _choose(i: int, legal: np.ndarray, alive: np.ndarray, rng, forced: np.ndarray | None):
    """Move i of every game: (square (G,), its bit (G,) uint64), uniformly random among the
    legal squares, or from `forced` (checked legal; a -1 ends that game: `alive` is updated)."""
    if forced is None:
        # Uniform choice among legal squares: argmax of iid uniforms on the legal set.
        square = np.argmax(rng.random((legal.shape[0], 64)) * bits_to_bool(legal), axis=1)
        return square, np.left_shift(_U(1), square.astype(np.uint64))
    sq = forced[:, i] if i < forced.shape[1] else np.full(legal.shape[0], -1, dtype=np.int64)
    sq = sq.astype(np.int64)
    alive &= sq >= 0
    square = np.where(alive, sq, 0)
    bit = np.left_shift(_U(1), square.astype(np.uint64))
    bad = alive & ((legal & bit) == 0)
    if bad.any():
        g = int(np.flatnonzero(bad)[0])
        raise ValueError(f"game {g}: move {i} (square {int(sq[g])}) is illegal")
    return square, bit


def _play(num_games: int, rng: np.random.Generator | None, forced: np.ndarray | None) -> GameRecord:
    """Run G games; random uniform legal moves, or the moves in `forced` (G, <=60; -1 = end)."""
    G = num_games
    black = np.full(G, START_BLACK, dtype=np.uint64)
    white = np.full(G, START_WHITE, dtype=np.uint64)
    turn = np.zeros(G, dtype=np.int8)  # side to move now
    alive = np.ones(G, dtype=bool)
    rec_moves = np.full((G, MAX_MOVES), -1, dtype=np.int8)
    rec_black = np.zeros((G, MAX_MOVES), dtype=np.uint64)
    rec_white = np.zeros((G, MAX_MOVES), dtype=np.uint64)
    rec_to_move = np.full((G, MAX_MOVES), GAME_OVER, dtype=np.int8)
    rec_legal = np.zeros((G, MAX_MOVES), dtype=np.uint64)
    lengths = np.zeros(G, dtype=np.int16)

    def legal_for_turn() -> np.ndarray:
        me = np.where(turn == BLACK, black, white)
        opp = np.where(turn == BLACK, white, black)
        return legal_moves(me, opp)

    legal = legal_for_turn()  # black always has 4 moves at the start
    for i in range(MAX_MOVES):
        square, bit = _choose(i, legal, alive, rng, forced)
        if not alive.any():
            break
        me = np.where(turn == BLACK, black, white)
        opp = np.where(turn == BLACK, white, black)
        f = flips(me, opp, bit)
        me_new, opp_new = me | bit | f, opp & ~f
        black = np.where(alive, np.where(turn == BLACK, me_new, opp_new), black)
        white = np.where(alive, np.where(turn == BLACK, opp_new, me_new), white)
        rec_moves[:, i] = np.where(alive, square, -1)
        lengths += alive
        # Next side: the opponent, unless it must pass; over when neither can move.
        turn = np.where(alive, 1 - turn, turn).astype(np.int8)
        legal = legal_for_turn()
        must_pass = alive & (legal == 0)
        turn = np.where(must_pass, 1 - turn, turn).astype(np.int8)
        legal = np.where(must_pass, legal_for_turn(), legal)
        over = alive & (legal == 0)
        rec_black[:, i] = black
        rec_white[:, i] = white
        rec_to_move[:, i] = np.where(alive & ~over, turn, GAME_OVER)
        rec_legal[:, i] = np.where(alive & ~over, legal, _U(0))
        if forced is not None and i + 1 < forced.shape[1]:
            late = over & (forced[:, i + 1] >= 0)
            if late.any():
                g = int(np.flatnonzero(late)[0])
                raise ValueError(f"game {g}: moves continue after the game ended at move {i}")
        alive &= ~over
    return GameRecord(rec_moves, lengths, rec_black, rec_white, rec_to_move, rec_legal)


def play_random(num_games: int, seed: int | None = None, rng: np.random.Generator | None = None) -> GameRecord:
    """G games of uniformly random legal moves, as OthelloGPT's synthetic data set."""
    if num_games < 1:
        raise ValueError(f"num_games must be >= 1, got {num_games}")
    return _play(num_games, rng if rng is not None else np.random.default_rng(seed), None)


def replay(moves: np.ndarray) -> GameRecord:
    """Replay given games (G, <=60) of squares, -1 padded; raises ValueError on an illegal move."""
    moves = np.asarray(moves)
    if moves.ndim != 2 or moves.shape[1] > MAX_MOVES:
        raise ValueError(f"moves must be (G, <=60), got shape {moves.shape}")
    if moves.size and (moves.max() > 63 or moves.min() < -1):
        raise ValueError("squares must be in 0..63 (or -1 for padding)")
    return _play(moves.shape[0], None, moves.astype(np.int64))

"""Chess board-state families: board -> (8, 8) or (1, 1) int8 class values.

Row 0 = rank 1 (a1..h1), column 0 = file a, so square s sits at (s // 8, s % 8). The
positions the paper labels are the '.' characters, where White is to move, so "mine" and
"the side to move" mean White there; the functions themselves work for either side.

Semantics follow ../shared/docs/reference.md (section 2) and upstream's chess_utils, with
these choices written down:
- `piece`: values -6..6 stored as class value + 6 (0..12); class 6 (blank) is masked.
  Upstream also zeroes, statically, the 32 (square, piece) BSPs that hold in the initial
  position: they stay in the 768-BSP denominator but never count (`INITIAL_PIECE_BSPS`).
- `threat`: squares attacked by the side NOT to move; `legal_moves`: destination squares of
  the side to move's legal moves (upstream hard-codes Black and White, equal at the dots).
- `any_fork`: an unpinned pawn, knight, bishop or rook of either side attacks two or more
  enemy pieces of higher value (P < N = B < R < Q < K; upstream only counts two targets of
  the same type, a quirk we do not copy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chess
import numpy as np

from boardlens.labels import Family

_VALUE = {chess.PAWN: 1, chess.KNIGHT: 2, chess.BISHOP: 3, chess.ROOK: 4, chess.QUEEN: 5, chess.KING: 6}
_RANK = {chess.PAWN: 1, chess.KNIGHT: 3, chess.BISHOP: 3, chess.ROOK: 5, chess.QUEEN: 9, chess.KING: 100}
BLANK_CLASS = 6


def _grid(squares) -> np.ndarray:
    out = np.zeros(64, dtype=np.int8)
    out[list(squares)] = 1
    return out.reshape(8, 8)


def _scalar(flag: bool) -> np.ndarray:
    return np.array([[1 if flag else 0]], dtype=np.int8)


def piece(board: chess.Board) -> np.ndarray:
    out = np.full(64, BLANK_CLASS, dtype=np.int8)
    for sq, p in board.piece_map().items():
        out[sq] = BLANK_CLASS + (_VALUE[p.piece_type] if p.color == chess.WHITE else -_VALUE[p.piece_type])
    return out.reshape(8, 8)


def threat(board: chess.Board) -> np.ndarray:
    return _grid(sq for sq in chess.SQUARES if board.is_attacked_by(not board.turn, sq))


def legal_moves(board: chess.Board) -> np.ndarray:
    return _grid({m.to_square for m in board.legal_moves})


def check(board: chess.Board) -> np.ndarray:
    return _scalar(board.is_check())


def can_check_next(board: chess.Board) -> np.ndarray:
    return _scalar(any(board.gives_check(m) for m in board.legal_moves))


def has_queen(board: chess.Board) -> np.ndarray:
    return _scalar(bool(board.pieces(chess.QUEEN, board.turn)))


def can_capture_queen(board: chess.Board) -> np.ndarray:
    queens = board.pieces(chess.QUEEN, not board.turn)
    return _scalar(any(m.to_square in queens for m in board.legal_moves))


def has_bishop_pair(board: chess.Board) -> np.ndarray:
    return _scalar(len(board.pieces(chess.BISHOP, board.turn)) >= 2)


def castling_any(board: chess.Board) -> np.ndarray:
    return _scalar(board.has_castling_rights(board.turn))


def castling_kingside(board: chess.Board) -> np.ndarray:
    return _scalar(board.has_kingside_castling_rights(board.turn))


def castling_queenside(board: chess.Board) -> np.ndarray:
    return _scalar(board.has_queenside_castling_rights(board.turn))


def any_fork(board: chess.Board) -> np.ndarray:
    for color in (chess.WHITE, chess.BLACK):
        for ptype in (chess.PAWN, chess.KNIGHT, chess.BISHOP, chess.ROOK):
            for sq in board.pieces(ptype, color):
                if board.is_pinned(color, sq):
                    continue
                targets = sum(1 for t in board.attacks(sq)
                              if (p := board.piece_at(t)) and p.color != color
                              and _RANK[p.piece_type] > _RANK[ptype])
                if targets >= 2:
                    return _scalar(True)
    return _scalar(False)


def pin(board: chess.Board) -> np.ndarray:
    return _scalar(any(board.is_pinned(p.color, sq) for sq, p in board.piece_map().items()
                       if p.piece_type != chess.KING))


def has_legal_en_passant(board: chess.Board) -> np.ndarray:
    return _scalar(board.has_legal_en_passant())


def ambiguous_moves(board: chess.Board) -> np.ndarray:
    seen: dict[tuple[int, int], int] = {}
    for m in board.legal_moves:
        key = (board.piece_type_at(m.from_square), m.to_square)
        if seen.setdefault(key, m.from_square) != m.from_square:
            return _scalar(True)
    return _scalar(False)


def _binary(name: str, shape: tuple[int, int]) -> Family:
    return Family(name, shape=shape, num_classes=2, masked_classes=(0,))


_PIECE_UNMASKED = Family("piece", shape=(8, 8), num_classes=13, masked_classes=(BLANK_CLASS,))
STRATEGY: dict[str, Callable[[chess.Board], np.ndarray]] = {
    "threat": threat, "legal_moves": legal_moves, "check": check,
    "can_check_next": can_check_next, "has_queen": has_queen,
    "can_capture_queen": can_capture_queen, "has_bishop_pair": has_bishop_pair,
    "castling_any": castling_any, "castling_kingside": castling_kingside,
    "castling_queenside": castling_queenside, "any_fork": any_fork, "pin": pin,
    "has_legal_en_passant": has_legal_en_passant, "ambiguous_moves": ambiguous_moves,
}
FUNCTIONS: dict[str, Callable[[chess.Board], np.ndarray]] = {"piece": piece, **STRATEGY}


def _initial_piece_bsps() -> tuple[int, ...]:
    """BSP indices (cell * kept classes + class slot) that hold in the initial position."""
    kept = _PIECE_UNMASKED.kept_classes
    start = piece(chess.Board()).reshape(-1)
    return tuple(int(cell * len(kept) + kept.index(int(c)))
                 for cell, c in enumerate(start) if c != BLANK_CLASS)


INITIAL_PIECE_BSPS = _initial_piece_bsps()
PIECE_FAMILY = dataclasses.replace(_PIECE_UNMASKED, zeroed_bsps=INITIAL_PIECE_BSPS)
FAMILIES = (PIECE_FAMILY, *(_binary(n, fn(chess.Board()).shape) for n, fn in STRATEGY.items()))


def label_board(board: chess.Board) -> dict[str, np.ndarray]:
    """Every family's values for one board: {name: (R, C) int8}."""
    return {name: fn(board) for name, fn in FUNCTIONS.items()}

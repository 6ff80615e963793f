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
BLANK_CLASS = 6


def _grid(squares) -> np.ndarray:
    out = np.zeros(64, dtype=np.int8)
    out[list(squares)] = 1
    return out.reshape(8, 8)


def _scalar(flag: bool) -> np.ndarray:
    return np.array([[1 if flag else 0]], dtype=np.int8)


# Each function takes the board and, optionally, its legal moves: label_board generates them
# once for the five families that need them (move generation is the costliest step in
# python-chess). Attack and pin tests use bitboards rather than one query per square; the
# tests check every function against the plain one-query-per-square definitions.


def _moves(board: chess.Board, moves: list[chess.Move] | None) -> list[chess.Move]:
    return list(board.legal_moves) if moves is None else moves


def piece(board: chess.Board, moves=None) -> np.ndarray:
    out = np.full(64, BLANK_CLASS, dtype=np.int8)
    for sq, p in board.piece_map().items():
        out[sq] = BLANK_CLASS + (_VALUE[p.piece_type] if p.color == chess.WHITE else -_VALUE[p.piece_type])
    return out.reshape(8, 8)


def _bits(mask: int) -> np.ndarray:
    """64-bit square mask -> (8, 8) int8 grid (bit s = square s)."""
    raw = np.frombuffer(mask.to_bytes(8, "little"), dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little").astype(np.int8).reshape(8, 8)


def threat(board: chess.Board, moves=None) -> np.ndarray:
    # A square is attacked by a colour iff it is in the union of that colour's attack sets.
    mask = 0
    for sq in chess.scan_forward(board.occupied_co[not board.turn]):
        mask |= board.attacks_mask(sq)
    return _bits(mask)


def legal_moves(board: chess.Board, moves=None) -> np.ndarray:
    return _grid({m.to_square for m in _moves(board, moves)})


def check(board: chess.Board, moves=None) -> np.ndarray:
    return _scalar(board.is_check())


def _lines(sq: int) -> tuple[int, int]:
    """(rank | file, both diagonals) through sq, edges included (python-chess's BB_*_MASKS
    leave the edges out: they are for slider lookups)."""
    return (chess.BB_RANK_ATTACKS[sq][0] | chess.BB_FILE_ATTACKS[sq][0], chess.BB_DIAG_ATTACKS[sq][0])


def _may_check_mask(king: int) -> int:
    """Squares a move must start or end on to give check to a king on `king`: its lines and
    diagonals (direct or discovered sliders, pawns, promotions) and knight jumps."""
    straight, diagonal = _lines(king)
    return straight | diagonal | chess.BB_KNIGHT_ATTACKS[king]


def can_check_next(board: chess.Board, moves=None) -> np.ndarray:
    king = board.king(not board.turn)
    if king is None:
        return _scalar(False)
    near = _may_check_mask(king)
    return _scalar(any(board.gives_check(m) for m in _moves(board, moves)
                       if (chess.BB_SQUARES[m.to_square] | chess.BB_SQUARES[m.from_square]) & near
                       or board.is_castling(m) or board.is_en_passant(m)))


def has_queen(board: chess.Board, moves=None) -> np.ndarray:
    return _scalar(bool(board.pieces_mask(chess.QUEEN, board.turn)))


def can_capture_queen(board: chess.Board, moves=None) -> np.ndarray:
    """A legal move captures any enemy queen (upstream checks only the first queen it finds:
    after a promotion to a second queen, we count either)."""
    queens = board.pieces_mask(chess.QUEEN, not board.turn)
    return _scalar(bool(queens) and any(chess.BB_SQUARES[m.to_square] & queens for m in _moves(board, moves)))


def has_bishop_pair(board: chess.Board, moves=None) -> np.ndarray:
    """Two or more bishops of the side to move, as upstream: not checked to stand on squares
    of opposite colours (the plain reading of "bishop pair"), so two promoted same-colour
    bishops count."""
    return _scalar(chess.popcount(board.pieces_mask(chess.BISHOP, board.turn)) >= 2)


def castling_any(board: chess.Board, moves=None) -> np.ndarray:
    return _scalar(board.has_castling_rights(board.turn))


def castling_kingside(board: chess.Board, moves=None) -> np.ndarray:
    return _scalar(board.has_kingside_castling_rights(board.turn))


def castling_queenside(board: chess.Board, moves=None) -> np.ndarray:
    return _scalar(board.has_queenside_castling_rights(board.turn))


def _higher_than(board: chess.Board, enemy: chess.Color) -> dict[int, int]:
    """Masks of `enemy`'s pieces worth more than each forking piece type."""
    occ = board.occupied_co[enemy]
    top = board.queens | board.kings
    return {chess.PAWN: occ & ~board.pawns, chess.KNIGHT: occ & (board.rooks | top),
            chess.BISHOP: occ & (board.rooks | top), chess.ROOK: occ & top}


def any_fork(board: chess.Board, moves=None) -> np.ndarray:
    for color in (chess.WHITE, chess.BLACK):
        higher = _higher_than(board, not color)
        for ptype, targets in higher.items():
            for sq in chess.scan_forward(board.pieces_mask(ptype, color)):
                if chess.popcount(board.attacks_mask(sq) & targets) >= 2 and not board.is_pinned(color, sq):
                    return _scalar(True)
    return _scalar(False)


def _has_pinned(board: chess.Board, color: chess.Color) -> bool:
    """An enemy slider on a line with `color`'s king with exactly one piece, of `color`, between."""
    king = board.king(color)
    if king is None:
        return False
    enemy = board.occupied_co[not color]
    straight, diagonal = _lines(king)
    straight &= board.rooks | board.queens
    diagonal &= board.bishops | board.queens
    for sniper in chess.scan_forward((straight | diagonal) & enemy):
        between = chess.between(king, sniper) & board.occupied
        if between and chess.popcount(between) == 1 and between & board.occupied_co[color]:
            return True
    return False


def pin(board: chess.Board, moves=None) -> np.ndarray:
    """Any absolute pin (to the king) of either colour, as upstream; relative pins (to the
    queen) do not count."""
    return _scalar(_has_pinned(board, chess.WHITE) or _has_pinned(board, chess.BLACK))


def has_legal_en_passant(board: chess.Board, moves=None) -> np.ndarray:
    return _scalar(board.has_legal_en_passant())


def ambiguous_moves(board: chess.Board, moves=None) -> np.ndarray:
    """Two pieces of one type of the side to move can move to the same square. As upstream,
    this counts two pawns that can capture onto one square (c4 and e4 onto d5), though SAN
    names a pawn capture by its file anyway and never needs to disambiguate it; one pawn's
    four promotions to one square do not count."""
    seen: dict[tuple[int | None, int], int] = {}
    for m in _moves(board, moves):
        key = (board.piece_type_at(m.from_square), m.to_square)
        if seen.setdefault(key, m.from_square) != m.from_square:
            return _scalar(True)
    return _scalar(False)


def _binary(name: str, shape: tuple[int, int]) -> Family:
    return Family(name, shape=shape, num_classes=2, masked_classes=(0,))


PIECE_NAMES = tuple("kqrbnp") + ("blank",) + tuple("PNBRQK")  # class value + 6 -> python-chess symbol
_PIECE_UNMASKED = Family("piece", shape=(8, 8), num_classes=13, masked_classes=(BLANK_CLASS,),
                         class_names=PIECE_NAMES)
STRATEGY: dict[str, Callable[..., np.ndarray]] = {
    "threat": threat, "legal_moves": legal_moves, "check": check,
    "can_check_next": can_check_next, "has_queen": has_queen,
    "can_capture_queen": can_capture_queen, "has_bishop_pair": has_bishop_pair,
    "castling_any": castling_any, "castling_kingside": castling_kingside,
    "castling_queenside": castling_queenside, "any_fork": any_fork, "pin": pin,
    "has_legal_en_passant": has_legal_en_passant, "ambiguous_moves": ambiguous_moves,
}
FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {"piece": piece, **STRATEGY}


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
    moves = list(board.legal_moves)
    return {name: fn(board, moves) for name, fn in FUNCTIONS.items()}

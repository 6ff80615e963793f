"""The rules side of causal checks: edit a real position so a BSP holds, and read the model's move.

A `MoveTask` is one natural position prepared for one BSP: its token prefix, the legal moves
on the real board and on the board edited so that the BSP holds (moves as the model writes
them: Othello tokens, chess SAN strings). Board families are edited (Othello
`mine_theirs_empty`, chess `piece`); so is Othello's `legal_moves`, where "the board edited so
that b holds" has one plain reading: the real board's legal moves plus square s (a model that
acts on b plays s). Other descriptions (threats, check, ...) are consequences of the board
with no single edit, so they get no causal score.

Edited boards need not be reachable by play. Legality is the game's rule applied to the
edited board as it stands (Othello's bracketing rule is defined on any board; python-chess's
move generator on any board it accepts). A chess edit that python-chess calls invalid
(`Board.status()`: a missing or extra king, a pawn on the first or last rank, the side not to
move in check, an impossible check, ...) is skipped, and the prefix replaced by another; a
17th piece or 9th pawn of a side is accepted (adding a piece early in a game always makes
one, and it does not change how moves are generated). Castling rights that the edit removes
the basis of are dropped, and so is an en-passant square with no legal capture; Othello edits are never
skipped, but squares the vocabulary cannot name (the four centre squares) are left out of both
legal sets.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch

from boardlens.labels import Family


class MoveTask(NamedTuple):
    tokens: torch.Tensor  # (n,) int64 prefix through the position
    real: frozenset  # legal moves on the real board
    edited: frozenset  # legal moves on the board edited so that the BSP holds


class MoveBatch(NamedTuple):
    """Pairs as model input: sequences (S, T) and scores(logits (S, T, V)) -> (P, K) move
    scores with masks (P, K) of the moves legal only on the real board (plus), only on the
    edited one (minus), and those whose legality the edit leaves alone (same)."""

    tokens: torch.Tensor
    scores: object  # Callable[[torch.Tensor], torch.Tensor]
    plus: torch.Tensor
    minus: torch.Tensor
    same: torch.Tensor


def _padded(seqs: list[torch.Tensor]) -> torch.Tensor:
    toks = torch.zeros(len(seqs), max(s.numel() for s in seqs), dtype=torch.long)
    for b, s in enumerate(seqs):
        toks[b, : s.numel()] = s
    return toks


class OthelloBoards:
    editable = ("mine_theirs_empty", "legal_moves")

    def move_batch(self, pairs, vocab: int) -> MoveBatch:
        """One sequence per pair; a move's score is its next-token logit (K = vocab); every move
        token outside plus and minus counts as unaffected."""
        toks = _padded([p.tokens for p in pairs])
        ends = torch.tensor([p.tokens.numel() - 1 for p in pairs])
        plus = torch.zeros(len(pairs), vocab, dtype=torch.bool)
        minus = torch.zeros_like(plus)
        for i, p in enumerate(pairs):
            plus[i, p.plus] = True
            minus[i, p.minus] = True
        same = ~(plus | minus)
        same[:, 0] = False  # the pad token is no move
        return MoveBatch(toks, lambda logits: logits[torch.arange(len(pairs)), ends].float(), plus, minus, same)

    def edit(self, tokens: torch.Tensor, family: Family, index: int, holds: bool = True) -> MoveTask | None:
        """holds=True: edit so the BSP holds (None where it already does); holds=False: so it
        no longer holds, the disc taking the other colour (None where it does not hold)."""
        from boardlens.games.othello import tokenizer
        from boardlens.games.othello.engine import BLACK, bits_to_bool, legal_moves, replay
        from boardlens.games.othello.labels import MINE, THEIRS

        if family.name not in self.editable:
            return None
        squares = tokenizer.decode(tokens.numpy())
        rec = replay(squares[None, :])
        i = tokens.numel() - 1
        side = int(rec.to_move[0, i])
        if side < 0:  # game over: no next move to read
            return None
        black, white = rec.black[0, i : i + 1], rec.white[0, i : i + 1]
        me, opp = (black, white) if side == BLACK else (white, black)
        cell, cls = family.bsp(index)

        def token_set(moves: np.ndarray) -> frozenset:
            sq = np.flatnonzero(bits_to_bool(moves)[0])
            sq = sq[~np.isin(sq, tokenizer.CENTRE)]
            return frozenset(int(t) for t in tokenizer.encode(sq))

        real = token_set(legal_moves(me, opp))
        if family.name == "legal_moves":  # b = "s is a legal move": its legal set gains (or loses) s
            if cell in tokenizer.CENTRE:
                return None
            tok = int(tokenizer.encode(np.array([cell]))[0])
            if (tok in real) == holds:
                return None
            return MoveTask(tokens, real, real | {tok} if holds else real - {tok})
        bit = np.uint64(1) << np.uint64(cell)
        now = MINE if me[0] & bit else THEIRS if opp[0] & bit else 0
        if (now == cls) == holds:
            return None  # already as asked
        new = cls if holds else (THEIRS if cls == MINE else MINE)
        me2 = (me & ~bit) | (bit if new == MINE else np.uint64(0))
        opp2 = (opp & ~bit) | (bit if new == THEIRS else np.uint64(0))
        return MoveTask(tokens, real, token_set(legal_moves(me2, opp2)))

    @torch.no_grad()
    def play(self, model, prefixes: list[torch.Tensor], repeats: int, from_layer: int,
             counts: list[int] | None = None) -> tuple[list[int], list[set] | None]:
        """The model's greedy move after each prefix, for `repeats` copies of the prefixes in
        order (one per intervention value), and its top-counts[i] moves (the graded variant).

        Blocks up to `from_layer` (before any intervention) run once per prefix; the copies
        start from that residual (right-padded: causal, so padding is unseen)."""
        n = max(p.numel() for p in prefixes)
        toks = torch.zeros(len(prefixes), n, dtype=torch.long)
        for b, p in enumerate(prefixes):
            toks[b, : p.numel()] = p
        if from_layer >= 0:
            _, resid = model(toks, resid_layers=(from_layer,), stop_after=from_layer)
            logits = model.forward_from(from_layer, resid[from_layer].repeat(repeats, 1, 1))
        else:
            logits, _ = model(toks.repeat(repeats, 1))
        ends = torch.tensor([p.numel() - 1 for p in prefixes]).repeat(repeats)
        last = logits[torch.arange(ends.numel()), ends].float()  # (repeats * B, V)
        ranked = None
        if counts is not None:
            order = last.argsort(-1, descending=True)
            ranked = [set(order[i, :c].tolist()) for i, c in enumerate(counts)]
        return last.argmax(-1).tolist(), ranked


@functools.cache
def _count_only_status() -> int:
    import chess

    return (chess.STATUS_TOO_MANY_WHITE_PIECES | chess.STATUS_TOO_MANY_BLACK_PIECES
            | chess.STATUS_TOO_MANY_WHITE_PAWNS | chess.STATUS_TOO_MANY_BLACK_PAWNS)


class ChessBoards:
    editable = ("piece",)
    max_same = 12  # moves legal on both boards scored per pair (the KL set)

    def move_batch(self, pairs, vocab: int) -> MoveBatch:
        """One sequence per (pair, candidate SAN): prefix + SAN + ' '; a move's score is the
        summed log-probability of its characters and the closing space (teacher forced)."""
        from boardlens.games.chess import tokenizer

        seqs, rows, pos, tgt = [], [], [], []
        K = max(len(p.plus) + len(p.minus) + min(len(p.same), self.max_same) for p in pairs)
        plus = torch.zeros(len(pairs), K, dtype=torch.bool)
        minus, same = torch.zeros_like(plus), torch.zeros_like(plus)
        for i, p in enumerate(pairs):
            cands = [*p.plus, *p.minus, *p.same[: self.max_same]]
            n0 = p.tokens.numel()
            for k, san in enumerate(cands):
                move = torch.from_numpy(tokenizer.encode(san + " "))
                s = len(seqs)
                seqs.append(torch.cat([p.tokens, move]))
                for c in range(move.numel()):  # logits at n0 - 1 + c predict character c of the move
                    rows.append((s, i * K + k))
                    pos.append(n0 - 1 + c)
                    tgt.append(int(move[c]))
            plus[i, : len(p.plus)] = True
            minus[i, len(p.plus) : len(p.plus) + len(p.minus)] = True
            same[i, len(p.plus) + len(p.minus) : len(cands)] = True
        seq_idx = torch.tensor([r[0] for r in rows])
        slot = torch.tensor([r[1] for r in rows])
        pos_t, tgt_t = torch.tensor(pos), torch.tensor(tgt)

        def scores(logits):
            logp = torch.log_softmax(logits.float(), -1)[seq_idx, pos_t, tgt_t]
            out = torch.zeros(len(pairs) * K, dtype=logp.dtype).index_add(0, slot, logp)
            return out.view(len(pairs), K)

        return MoveBatch(_padded(seqs), scores, plus, minus, same)

    def edit(self, tokens: torch.Tensor, family: Family, index: int, holds: bool = True) -> MoveTask | None:
        """holds=True: put the BSP's piece on its square (None where it is there); holds=False:
        empty that square (None where the piece is not there)."""
        import chess

        from boardlens.games.chess import tokenizer
        from boardlens.games.chess.families import BLANK_CLASS
        from boardlens.games.chess.lm_data import legal_san_set
        from boardlens.games.chess.transcripts import parse_transcript, replay

        if family.name not in self.editable:
            return None
        text = tokenizer.decode(tokens.numpy())
        board = replay(parse_transcript(text)[0])[-1]
        if board.is_game_over():
            return None
        cell, cls = family.bsp(index)
        value = cls - BLANK_CLASS
        edited = board.copy(stack=False)
        piece = chess.Piece(abs(value), chess.WHITE if value > 0 else chess.BLACK) if value else None
        if (edited.piece_at(cell) == piece) == holds:
            return None  # already as asked
        if holds:
            edited.set_piece_at(cell, piece)
        else:
            edited.remove_piece_at(cell)
        edited.castling_rights = edited.clean_castling_rights()
        if edited.ep_square is not None and not edited.has_legal_en_passant():
            edited.ep_square = None
        if edited.status() & ~_count_only_status():
            return None
        return MoveTask(tokens, frozenset(legal_san_set(board)), frozenset(legal_san_set(edited)))

    def play(self, model, prefixes: list[torch.Tensor], repeats: int, from_layer: int,
             counts: list[int] | None = None) -> tuple[list[str], None]:
        """Greedy SAN after each prefix (x repeats), written character by character with the
        whole model (every new character passes the intervention too). No graded variant: it
        would need every move's probability."""
        from boardlens.games.chess import tokenizer
        from boardlens.games.chess.lm_data import Prompt, sample_moves

        batch = [Prompt(tokenizer.decode(p.numpy()), None) for p in prefixes] * repeats
        return sample_moves(model, batch, temperature=0), None


BOARDS = {"othello": OthelloBoards, "chess": ChessBoards}


def boards_for(game: str):
    if game not in BOARDS:
        raise ValueError(f"no board editor for game {game!r}")
    return BOARDS[game]()

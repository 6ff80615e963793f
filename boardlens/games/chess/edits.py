"""Chess's board edits (`Game.board_editor`): the `piece` family.

A chess edit that python-chess calls invalid (`Board.status()`: a missing or extra king, a
pawn on the first or last rank, the side not to move in check, an impossible check, ...) is
skipped, and the prefix replaced by another; a 17th piece or 9th pawn of a side is accepted
(adding a piece early in a game always makes one, and it does not change how moves are
generated). Castling rights that the edit removes the basis of are dropped, and so is an
en-passant square with no legal capture. Other families (threats, check, ...) are
consequences of the board with no single edit, so they get no causal score.
"""

from __future__ import annotations

import functools

import torch

from boardlens.games.edits import MoveBatch, MoveTask, padded
from boardlens.labels import Family


@functools.cache
def _count_only_status() -> int:
    import chess

    return (chess.STATUS_TOO_MANY_WHITE_PIECES | chess.STATUS_TOO_MANY_BLACK_PIECES
            | chess.STATUS_TOO_MANY_WHITE_PAWNS | chess.STATUS_TOO_MANY_BLACK_PAWNS)


class ChessBoardEditor:
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

        return MoveBatch(padded(seqs), scores, plus, minus, same)

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

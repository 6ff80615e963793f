"""Othello's board edits (`Game.board_editor`): `mine_theirs_empty` and `legal_moves`.

A `legal_moves` edit has one plain reading: the real board's legal moves plus square s (a
model that acts on "s is legal" plays s). Othello edits are never skipped (the bracketing rule
is defined on any board), but squares the vocabulary cannot name (the four centre squares) are
left out of both legal sets.
"""

from __future__ import annotations

import numpy as np
import torch

from boardlens.games.edits import MoveBatch, MoveTask, padded
from boardlens.labels import Family


class OthelloBoardEditor:
    editable = ("mine_theirs_empty", "legal_moves")

    def move_batch(self, pairs, vocab: int) -> MoveBatch:
        """One sequence per pair; a move's score is its next-token logit (K = vocab); every move
        token outside plus and minus counts as unaffected."""
        toks = padded([p.tokens for p in pairs])
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

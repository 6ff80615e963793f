"""Board edits: the optional part of a `Game` that causal checks need (faithfulness, steering).

A game that can edit a real position so that a board BSP holds, and read the model's move
after it, returns a `BoardEditor` from `Game.board_editor()`; one that cannot returns None, and
descriptions then get clarity, responsiveness and purity but no faithfulness, and `steer`
says that it needs board edits.

A `MoveTask` is one natural position prepared for one BSP: its token prefix, the legal moves
on the real board and on the board edited so that the BSP holds (moves as the model writes
them: Othello tokens, chess SAN strings). Edited boards need not be reachable by play:
legality is the game's rule applied to the edited board as it stands. The built-in editors
(games/othello/edits.py, games/chess/edits.py) say what they edit and what they skip.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

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


def padded(seqs: list[torch.Tensor]) -> torch.Tensor:
    toks = torch.zeros(len(seqs), max(s.numel() for s in seqs), dtype=torch.long)
    for b, s in enumerate(seqs):
        toks[b, : s.numel()] = s
    return toks


class BoardEditor(Protocol):
    """What a game implements for causal checks; see the module docstring."""

    editable: tuple[str, ...]
    """Families whose BSPs it can make hold (or not) by an edit; the first is `steer`'s default."""

    def edit(self, tokens: torch.Tensor, family: Family, index: int, holds: bool = True) -> MoveTask | None:
        """The position after `tokens` edited so BSP `index` of `family` holds (holds=False: so it
        no longer does); None where it already is so, or the edit is not valid."""

    def move_batch(self, pairs, vocab: int) -> MoveBatch:
        """Pairs (steering) as model input, with each pair's move scores and masks."""

    def play(self, model, prefixes: list[torch.Tensor], repeats: int, from_layer: int,
             counts: list[int] | None = None) -> tuple[list, list[set] | None]:
        """The model's greedy move after each prefix, `repeats` copies in order (interventions
        apply from `from_layer`), and optionally its top-counts[i] moves."""

"""Language-model data for Othello: token batches and legal-move accuracy."""

from __future__ import annotations

import numpy as np
import torch

from boardlens.games.labelled import LabelledGames
from boardlens.games.othello import tokenizer
from boardlens.games.othello.engine import GameRecord, bits_to_bool, play_random
from boardlens.games.othello.labels import label_games


def tokens_of(rec: GameRecord) -> np.ndarray:
    """(G, 60) squares -> (G, 60) tokens (pad after the end)."""
    return tokenizer.encode(rec.moves)


def training_batch(rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh random games -> inputs (B, 59) and next-move targets (B, 59), -100 = ignored."""
    return next_targets(play_random(batch_size, rng=rng))


def next_targets(rec: GameRecord) -> tuple[torch.Tensor, torch.Tensor]:
    toks = torch.from_numpy(tokens_of(rec))  # (B, 60)
    x, y = toks[:, :-1].clone(), toks[:, 1:].clone()
    y[y == tokenizer.PAD] = -100  # no move follows: nothing to predict
    return x, y


def board_targets(rec: GameRecord) -> torch.Tensor:
    """(B, 59, 64) mine/theirs/empty class per square at every position, as the producer labels
    them (position p: the board after move p, 'mine' the side to move); -100 past a game's end."""
    T = tokenizer.CONTEXT
    board = torch.from_numpy(label_games(rec, T)["mine_theirs_empty"].reshape(-1, T, 64)).long()
    past = torch.arange(T)[None, :] >= torch.from_numpy(rec.lengths.astype(np.int64))[:, None]
    board[past] = -100
    return board


def next_board_batch(rng: np.random.Generator, batch_size: int):
    """training_batch plus the board targets of the same games (`lm train --board-head`)."""
    rec = play_random(batch_size, rng=rng)
    return (*next_targets(rec), board_targets(rec))


def legal_board_batch(rng: np.random.Generator, batch_size: int):
    """legal_target_batch plus the board targets of the same games (`lm train --board-head`)."""
    rec = play_random(batch_size, rng=rng)
    return (*legal_targets(rec), board_targets(rec))


def legal_target_batch(rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh random games -> inputs (B, 59) and next-move distributions (B, 59, 61).

    In a game of uniformly random legal moves, the move after position p is drawn uniformly
    from the legal set there, so this distribution is the conditional expectation of the
    one-hot next-move target: cross-entropy against it has the same expected gradient as
    next-token cross-entropy (same optimum: the same language model), minus the sampling
    noise of the one move actually played (Rao-Blackwellised). Rows after the game's end
    are all zero (nothing to predict; `lm_loss` skips them).
    """
    return legal_targets(play_random(batch_size, rng=rng))


def legal_targets(rec: GameRecord) -> tuple[torch.Tensor, torch.Tensor]:
    batch_size = rec.moves.shape[0]
    x = torch.from_numpy(tokens_of(rec)[:, : tokenizer.CONTEXT])
    legal = bits_to_bool(rec.legal[:, : tokenizer.CONTEXT])  # (B, 59, 64)
    q = np.zeros((batch_size, tokenizer.CONTEXT, tokenizer.VOCAB_SIZE), dtype=np.float32)
    q[..., 1:] = legal[..., tokenizer.PLAYABLE]  # token t >= 1 is square PLAYABLE[t - 1]
    n = q.sum(-1, keepdims=True)
    np.divide(q, n, out=q, where=n > 0)
    return x, torch.from_numpy(q)


@torch.no_grad()
def legal_move_accuracy(model, rec: GameRecord, batch_size: int = 512) -> float:
    """Fraction of positions (with a next move) where the top-1 prediction is a legal move."""
    toks = torch.from_numpy(tokens_of(rec))[:, : tokenizer.CONTEXT]
    legal = bits_to_bool(rec.legal[:, : tokenizer.CONTEXT])  # (G, 59, 64) legal squares
    has_next = rec.to_move[:, : tokenizer.CONTEXT] >= 0
    hits = total = 0
    device = next(model.parameters()).device
    for s in range(0, toks.shape[0], batch_size):
        logits, _ = model(toks[s : s + batch_size].to(device))
        square = tokenizer.decode(logits.argmax(-1).cpu().numpy())  # (b, 59), -1 for pad
        ok = np.take_along_axis(legal[s : s + batch_size], np.maximum(square, 0)[..., None], -1)[..., 0]
        ok &= square >= 0
        mask = has_next[s : s + batch_size]
        hits += int(ok[mask].sum())
        total += int(mask.sum())
    return hits / max(total, 1)


def labelled_games(rng: np.random.Generator, num_games: int) -> LabelledGames:
    """Random games, tokenised and labelled at every position (the producer's input).

    Position p of game g is the state after move p; tokens are (G, 59) with 0 = pad.
    """
    rec = play_random(num_games, rng=rng)
    T = tokenizer.CONTEXT
    tokens = tokens_of(rec)[:, :T]
    lengths = np.minimum(rec.lengths, T).astype(np.int16)
    pos = np.arange(T, dtype=np.int16)[None, :]
    label_pos = np.where(pos < lengths[:, None], pos, np.int16(-1)).astype(np.int16)  # -1 = none
    return LabelledGames(tokens, lengths, label_pos, label_games(rec, T))

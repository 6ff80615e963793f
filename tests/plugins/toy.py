"""A toy plugin: tic-tac-toe, a ReLU SAE with a decoder bias, and an L^p trainer for it.

It exists to prove that a game, an SAE architecture and a trainer kind are each one module of
someone else's plus one register() call: nothing under boardlens/ names them. Loaded with
BOARDLENS_PLUGINS=tests.plugins.toy (every service `up` starts inherits the variable).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from boardlens.games.base import Game, LMData
from boardlens.games.labelled import LabelledGames
from boardlens.labels import Family
from boardlens.registry import ARCHS, GAMES, TRAINERS
from boardlens.sae.archs.base import SAEModule
from boardlens.sae.base import Losses, PenaltyOptions, SAETrainer, firing, recon_loss

# --- the game: tokens 1..9 = squares, 0 = pad; the model sees the first 8 moves ----------
CONTEXT, LINES = 8, ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
EMPTY, MINE, THEIRS = 0, 1, 2


def play(rng: np.random.Generator, num_games: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> moves (G, 9) square or -1, lengths (G,), boards (G, 9, 9): board after each move,
    +1 X, -1 O, 0 empty."""
    moves = np.full((num_games, 9), -1)
    boards = np.zeros((num_games, 9, 9), dtype=np.int8)
    lengths = np.zeros(num_games, dtype=np.int16)
    for g in range(num_games):
        board = np.zeros(9, dtype=np.int8)
        for i in range(9):
            sq = rng.choice(np.flatnonzero(board == 0))
            board[sq] = 1 if i % 2 == 0 else -1
            moves[g, i], boards[g, i], lengths[g] = sq, board, i + 1
            if any(abs(int(board[list(line)].sum())) == 3 for line in LINES):
                break
    return moves, lengths, boards


def labelled(rng: np.random.Generator, num_games: int) -> LabelledGames:
    moves, lengths, boards = play(rng, num_games)
    tokens = np.where(moves >= 0, moves + 1, 0)[:, :CONTEXT]
    lengths = np.minimum(lengths, CONTEXT).astype(np.int16)
    pos = np.arange(CONTEXT, dtype=np.int16)[None, :]
    label_pos = np.where(pos < lengths[:, None], pos, np.int16(-1)).astype(np.int16)
    state = board_states(moves, lengths, boards)
    return LabelledGames(tokens, lengths, label_pos, {"mine_theirs_empty": state.reshape(-1, CONTEXT, 3, 3)})


def board_states(moves, lengths, boards) -> np.ndarray:
    """(G, CONTEXT, 9) empty/mine/theirs per square after each move, mine = the side to move."""
    mover = np.where(np.arange(CONTEXT) % 2 == 0, -1, 1)[None, :, None]  # O moves after X's move 0
    b = boards[:, :CONTEXT] * mover  # (G, P, 9): +1 = the side to move
    return np.where(b > 0, MINE, np.where(b < 0, THEIRS, EMPTY)).astype(np.int8)


def training_batch(rng: np.random.Generator, batch_size: int, board: bool = False):
    moves, lengths, boards = play(rng, batch_size)
    toks = torch.from_numpy(np.where(moves >= 0, moves + 1, 0))  # (B, 9)
    x, y = toks[:, :CONTEXT].clone(), toks[:, 1:].clone()
    y[y == 0] = -100
    if not board:
        return x, y
    state = torch.from_numpy(board_states(moves, lengths, boards)).long()  # (B, P, 9)
    state[torch.arange(CONTEXT)[None, :] >= torch.from_numpy(lengths.astype(np.int64))[:, None]] = -100
    return x, y, state


@torch.no_grad()
def legal_move_accuracy(model, games) -> float:
    moves, lengths, boards = games
    x = torch.from_numpy(np.where(moves >= 0, moves + 1, 0)[:, :CONTEXT])
    pred = model(x)[0].argmax(-1).numpy() - 1  # (G, 8) squares, -1 = pad
    has_next = np.arange(CONTEXT)[None, :] < (lengths[:, None] - 1)
    empty = np.take_along_axis(boards[:, :CONTEXT], np.maximum(pred, 0)[..., None], -1)[..., 0] == 0
    return float((empty & (pred >= 0))[has_next].mean())


class TicTacToe(Game):
    name = "tictactoe"
    vocab_size = 10
    default_batch_games = 256

    def families(self):
        return (Family("mine_theirs_empty", shape=(3, 3), num_classes=3, masked_classes=(EMPTY,),
                       class_names=("empty", "mine", "theirs")),)

    def random_games(self, rng, num_games):
        return labelled(rng, num_games)

    def lm_data(self) -> LMData:
        return LMData(self.vocab_size, CONTEXT, {"next": training_batch},
                      lambda n, seed: play(np.random.default_rng(seed), n), legal_move_accuracy, "legal_move_acc",
                      {"next": lambda rng, n: training_batch(rng, n, board=True)})


# --- the architecture: ReLU encoder, decoder with its own bias, no pre-encoder centring ---
class BiasedDecoderAE(SAEModule):
    arch = "toy_relu"
    tensor_names = frozenset({"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"})

    def __init__(self, d_in: int, d_sae: int) -> None:
        super().__init__(d_in, d_sae)
        self.encoder = nn.Linear(d_in, d_sae)
        self.decoder = nn.Linear(d_sae, d_in)
        self.tie_to_unit_decoder()

    def encode(self, x):
        return F.relu(self.encoder(x))

    def decode(self, f):
        return self.decoder(f)

    @torch.no_grad()
    def scale_biases(self, s: float) -> None:
        self.encoder.bias.mul_(s)
        self.decoder.bias.mul_(s)


# --- the trainer: recon + lambda mean sum f^power --------------------------------------
@dataclass(frozen=True)
class ToyOptions(PenaltyOptions):
    power: float = 1.5
    """Exponent of the sparsity term."""


class ToyTrainer(SAETrainer):
    kind = "toy_lp"
    arch = "toy_relu"
    Options = ToyOptions
    summary = "recon + lambda mean sum f^power (a test plugin)"

    def losses(self, x):
        x_hat, f = self.ae(x)
        sparsity = f.pow(self.opts.power).sum(-1).mean()
        recon = recon_loss(x, x_hat, self.recon)
        total = recon + self.penalty_coeff() * self.sparsity_scale() * sparsity
        return Losses(total, recon, sparsity, torch.zeros((), device=x.device), x_hat, *firing(f), f.detach())


GAMES.register(TicTacToe.name, TicTacToe())
ARCHS.register(BiasedDecoderAE.arch, BiasedDecoderAE)
TRAINERS.register(ToyTrainer.kind, ToyTrainer)

"""The Game interface: everything the project needs to know about a game, in one object.

A game module defines a `Game` subclass and registers one instance:
`GAMES.register(game.name, game)` (built-ins: boardlens/games/othello, boardlens/games/chess;
others through a plugin, see boardlens.registry). Then the producer streams it, `lm train`
trains a model on it, probes and the evaluator score its board-state properties (BSPs), and a
checkpoint declares it by its config's "game" (ours) or by its vocabulary size (public ones).

Heavy imports (engines, python-chess) stay inside the methods: the registry imports every
game module on its first lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from boardlens.games.edits import BoardEditor
from boardlens.games.labelled import LabelledGames
from boardlens.labels import Family

Job = tuple[Callable[..., LabelledGames], tuple]
"""A picklable unit of work: fn(*args) -> one batch of labelled games (run in a worker process
when the game labels slowly)."""


class GameSource:
    """Where a stream's games come from: `job(index)` is the work for batch `index` (asked in
    order), None once the source is exhausted. The default: freshly generated random games,
    batch i from seed (seed, i), labelled in the caller's thread (fast games)."""

    in_process = True
    """Label in the caller's thread (False: in the stream's worker processes)."""

    def __init__(self, game: Game, seed: int, batch_games: int, name: str = "random") -> None:
        self.game, self.seed, self.batch_games, self.name = game, seed, batch_games, name

    def job(self, index: int) -> Job | None:
        return self.game.random_games, (np.random.default_rng([self.seed, index]), self.batch_games)

    def close(self) -> None:
        pass


class LMData(NamedTuple):
    """What training a game LM needs: its vocabulary, batches and a legality score."""

    vocab_size: int
    context: int  # tokens per training sequence
    batches: dict[str, Callable]  # objective -> (rng, batch_size) -> (inputs (B, T), targets (B, T) ids or (B, T, V) probs)
    eval_set: Callable[[int, int], object]  # (num_games, seed) -> held-out set
    score: Callable[..., float]  # (model, held-out set, **options) -> legal-move score in [0, 1]
    score_name: str
    board_batches: dict[str, Callable] = {}  # objective -> (rng, batch_size) -> (inputs, targets, board)
    """The same batches with the board family's classes at every position, for `lm train`'s
    auxiliary board heads: board (B, T, cells) int64, -100 where no position is labelled.
    Empty: the game's LMs train without board heads."""


class Game:
    """Subclass per game; the attributes describe it, the methods produce its data."""

    name: str = ""
    """Registry name, carried in every batch header and model config."""
    vocab_size: int = 0
    """Tokens of its language models; how a public checkpoint (no config naming the game) is recognised."""
    default_batch_games: int = 64
    """Games per producer message (about 4k tokens)."""
    bundled_model: str = ""
    """Folder of its bundled model under models/ ('' = none)."""
    lm_objectives: tuple[str, ...] = ("next",)
    """Training objectives `lm train` offers (keys of lm_data().batches)."""

    def default_sae_layer(self, n_layer: int) -> int:
        """Block a public checkpoint of n_layer blocks streams by default (the paper's 5 of 8)."""
        return 5 if n_layer == 8 else (2 * n_layer) // 3

    def families(self) -> tuple[Family, ...]:
        """The BSP families evaluated for this game; the first is the board itself."""
        raise NotImplementedError

    def square_name(self, cell: int) -> str:
        """Name of cell `cell` (row-major) of an (8, 8) family, as the game's players write it."""
        return f"r{cell // 8}c{cell % 8}"

    def bsp_name(self, family: Family, index: int) -> str:
        """'legal_moves C3', 'mine_theirs_empty C3=theirs', 'piece f3=N', 'check'."""
        cell, cls = family.bsp(index)
        where = "" if family.shape == (1, 1) else " " + self.square_name(cell)
        what = f"={family.class_names[cls]}" if family.class_names else ""
        return f"{family.name}{where}{what}"

    def family_groups(self) -> dict[str, tuple[str, ...]]:
        """Averages reported beside the families: {group name: member families}."""
        return {"average": tuple(f.name for f in self.families())}

    def random_games(self, rng: np.random.Generator, num_games: int) -> LabelledGames:
        """num_games random legal games, tokenised and labelled (the default source)."""
        raise NotImplementedError

    def source(self, spec: str, seed: int, batch_games: int, engine: str = "", start: int = 0) -> GameSource:
        """The games of a stream; `start` batches were handed out by an earlier run."""
        if spec != "random":
            raise ValueError(f"{self.name} games come from the 'random' source only, got {spec!r}")
        return GameSource(self, seed, batch_games)

    def lm_data(self) -> LMData:
        raise NotImplementedError

    # --- optional: what a game adds for causal checks and for pictures --------------------
    def board_editor(self) -> BoardEditor | None:
        """Edits of real positions so a board BSP holds, and the model's moves after them
        (`boardlens.games.edits`): faithfulness and `steer` need it. None (the default): the
        game has none; descriptions still get clarity, responsiveness and purity."""
        return None

    def draw_board(self, tokens: torch.Tensor, cell: int | None, board: torch.Tensor) -> tuple[str, str]:
        """(SVG of the position after `tokens` with `cell` outlined, a caption) for the feature
        browser. board: the first family's (num_bsps,) bool labels there. The default draws a
        plain grid of that family's shape with the class that holds in each cell."""
        from boardlens.games.drawing import grid_svg

        return grid_svg(self.families()[0], board, cell), f"after token {tokens.numel()}"

    def __repr__(self) -> str:
        return f"<game {self.name}>"

"""Othello: vectorised engine, OthelloGPT tokenizer, board-state labels."""

from __future__ import annotations

from boardlens.games.base import Game, LMData
from boardlens.registry import GAMES


class Othello(Game):
    name = "othello"
    vocab_size = 61
    default_batch_games = 64  # 64 x 59 tokens
    bundled_model = "othello-gpt"
    lm_objectives = ("next", "legal")

    def families(self):
        from boardlens.games.othello.labels import FAMILIES

        return FAMILIES

    def square_name(self, cell):
        from boardlens.games.othello.tokenizer import square_name

        return square_name(cell)

    def random_games(self, rng, num_games):
        from boardlens.games.othello.lm_data import labelled_games

        return labelled_games(rng, num_games)

    def lm_data(self) -> LMData:
        from boardlens.games.othello import lm_data, tokenizer
        from boardlens.games.othello.engine import play_random

        return LMData(tokenizer.VOCAB_SIZE, tokenizer.CONTEXT,
                      {"next": lm_data.training_batch, "legal": lm_data.legal_target_batch},
                      lambda n, seed: play_random(n, seed=seed), lm_data.legal_move_accuracy, "legal_move_acc",
                      {"next": lm_data.next_board_batch, "legal": lm_data.legal_board_batch})

    def board_editor(self):
        from boardlens.games.othello.edits import OthelloBoardEditor

        return OthelloBoardEditor()

    def draw_board(self, tokens, cell, board):
        from boardlens.games.othello.draw import draw_board

        return draw_board(tokens, cell)


GAMES.register(Othello.name, Othello())

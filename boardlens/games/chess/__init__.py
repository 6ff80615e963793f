"""Chess: ChessGPT transcripts and tokenizer (python-chess rules).

Labelling runs at about 2,000 positions/s per core, so chess games are made in the stream's
worker processes (`ChessSource.in_process = False`); sources: random, stockfish[:...], pgn:PATH.
"""

from __future__ import annotations

from itertools import islice

from boardlens.games.base import Game, GameSource, Job, LMData
from boardlens.games.labelled import LabelledGames
from boardlens.registry import GAMES


def generated_games(spec, num_games: int, seed: tuple[int, ...]) -> LabelledGames:
    """Worker job: num_games games from a generating source, labelled."""
    from boardlens.games.chess.lm_data import labelled_transcripts
    from boardlens.games.chess.sources import generate

    return labelled_transcripts(generate(spec, num_games, seed))


def read_games(texts: list[str]) -> LabelledGames:
    """Worker job: transcripts read from a PGN file, labelled."""
    from boardlens.games.chess.lm_data import labelled_transcripts

    return labelled_transcripts(texts)


class ChessSource(GameSource):
    """Generated games (batch i from seed (seed, i)) or a PGN file in file order."""

    in_process = False

    def __init__(self, game: Game, spec: str, seed: int, batch_games: int, engine: str, start: int) -> None:
        from boardlens.games.chess.sources import parse_source
        from boardlens.games.chess.transcripts import pgn_transcripts

        self.spec = parse_source(spec, engine)
        super().__init__(game, seed, batch_games, str(self.spec))
        self._texts = None
        if not self.spec.generated:
            self._texts = pgn_transcripts(self.spec.path)
            for _ in islice(self._texts, start * batch_games):  # the games of earlier runs
                pass

    def job(self, index: int) -> Job | None:
        if self.spec.generated:
            return generated_games, (self.spec, self.batch_games, (self.seed, index))
        texts = list(islice(self._texts, self.batch_games))
        return (read_games, (texts,)) if texts else None

    def close(self) -> None:
        if self._texts is not None:
            self._texts.close()  # the PGN file


class Chess(Game):
    name = "chess"
    vocab_size = 32
    default_batch_games = 16  # 16 x 256 characters
    bundled_model = "chess-gpt"

    def families(self):
        from boardlens.games.chess.families import FAMILIES

        return FAMILIES

    def square_name(self, cell):
        import chess  # row 0 = rank 1, so the cell is python-chess's square index

        return chess.square_name(cell)

    def family_groups(self):
        """Adds 'strategy_average' over the 14 strategy families, the paper's summary of them."""
        groups = super().family_groups()
        return {**groups, "strategy_average": tuple(n for n in groups["average"] if n != "piece")}

    def source(self, spec, seed, batch_games, engine="", start=0) -> GameSource:
        return ChessSource(self, spec, seed, batch_games, engine, start)

    def lm_data(self) -> LMData:
        from boardlens.games.chess import lm_data, tokenizer

        return LMData(tokenizer.VOCAB_SIZE, tokenizer.GAME_CHARS, {"next": lm_data.training_batch},
                      lm_data.eval_prompts, lm_data.legal_move_rate, "legal_move_rate",
                      {"next": lm_data.training_batch_with_board})

    def board_editor(self):
        from boardlens.games.chess.edits import ChessBoardEditor

        return ChessBoardEditor()

    def draw_board(self, tokens, cell, board):
        from boardlens.games.chess.draw import draw_board

        return draw_board(tokens, cell)


GAMES.register(Chess.name, Chess())

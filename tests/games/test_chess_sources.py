"""Chess game sources: spec parsing, Stockfish self-play, and the labelled-game stream."""

import chess
import numpy as np
import pytest

from boardlens.games.chess.families import label_board
from boardlens.games.chess.lm_data import MAX_DOTS, labelled_transcripts
from boardlens.games.chess.sources import generate, parse_source, stockfish_path
from boardlens.games.chess.tokenizer import GAME_CHARS, decode
from boardlens.games.chess.transcripts import (
    dot_positions,
    format_transcript,
    parse_transcript,
    replay,
)
from boardlens.games.stream import GameStream

try:
    stockfish_path()
    HAVE_STOCKFISH = True
except ValueError:
    HAVE_STOCKFISH = False
needs_stockfish = pytest.mark.skipif(not HAVE_STOCKFISH, reason="stockfish not installed (make deps)")


def test_parse_source_specs_and_errors(tmp_path):
    assert str(parse_source("random")) == "random"
    pgn = tmp_path / "g.pgn"
    pgn.write_text("1. e4 e5 *\n")
    assert parse_source(f"pgn:{pgn}").path == str(pgn)
    with pytest.raises(ValueError, match="no such file"):
        parse_source(f"pgn:{tmp_path / 'missing.pgn'}")
    with pytest.raises(ValueError, match="needs a path"):
        parse_source("pgn:")
    with pytest.raises(ValueError, match="unknown game source"):
        parse_source("lichess")
    with pytest.raises(ValueError, match="unknown stockfish option"):
        parse_source("stockfish:depth=3")
    with pytest.raises(ValueError, match="bad range"):
        parse_source("stockfish:nodes=50-10")
    with pytest.raises(ValueError, match="Stockfish not found"):
        parse_source("stockfish", engine=str(tmp_path / "nope"))


@needs_stockfish
def test_stockfish_games_are_legal_varied_and_reproducible():
    spec = parse_source("stockfish:nodes=8-64,opening=2-6")
    assert spec.nodes == (8, 64) and spec.opening == (2, 6)
    games = generate(spec, 6, (7, 0))
    assert generate(spec, 6, (7, 0)) == games  # same seed, same games (new UCI game each)
    assert len(set(games)) == 6 and len({g[:12] for g in games}) > 1  # random openings differ
    for text in games:
        assert text.startswith(";1.") and len(text) <= GAME_CHARS
        if len(text) == GAME_CHARS:
            sans, _ = parse_transcript(text)  # the cut last chunk is not a move
            replay(sans)  # raises on any illegal move
        else:  # the game ended: its last chunk is a whole move
            sans, _ = parse_transcript(text + " ")
            assert replay(sans)[-1].is_game_over()
            assert format_transcript(sans) == text


def test_labelled_transcripts_match_per_board_labels():
    texts = generate(parse_source("random"), 5, (1, 2))
    lg = labelled_transcripts(texts)
    assert lg.tokens.shape == (5, GAME_CHARS) and lg.label_pos.shape == (5, MAX_DOTS)
    assert lg.labels["piece"].shape == (5, MAX_DOTS, 8, 8) and lg.labels["check"].shape == (5, MAX_DOTS, 1, 1)
    for g, text in enumerate(texts):
        assert decode(lg.tokens[g, : lg.lengths[g]]) == text
        dots = dot_positions(text)
        assert [int(p) for p in lg.label_pos[g] if p >= 0] == [i for i, _ in dots]
        assert all(text[p] == "." for p in lg.label_pos[g] if p >= 0)
        for p, (_, board) in enumerate(dots):
            assert board.turn == chess.WHITE
            for name, value in label_board(board).items():
                np.testing.assert_array_equal(lg.labels[name][g, p], value)
        unused = lg.label_pos[g] < 0
        assert all((lg.labels[k][g][unused] == 0).all() for k in lg.labels)


def _same(a, b):
    assert (a.tokens == b.tokens).all() and (a.label_pos == b.label_pos).all()
    assert all((a.labels[k] == b.labels[k]).all() for k in a.labels)


def test_stream_is_the_same_in_workers_or_in_thread():
    with GameStream("chess", 4, seed=5, workers=0) as a, GameStream("chess", 4, seed=5, workers=2) as b:
        batches = [a.next() for _ in range(3)]
        for x in batches:
            _same(x, b.next())
    assert not (batches[0].tokens == batches[1].tokens).all()


def test_stream_reads_a_pgn_file_to_its_end(tmp_path):
    texts = generate(parse_source("random"), 7, (3,))
    pgn = tmp_path / "games.pgn"
    pgn.write_text("".join(f"[Event \"{i}\"]\n\n{' '.join(t[1:].split(' ')[:-1])} *\n\n"
                           for i, t in enumerate(texts)))
    with GameStream("chess", 3, source=f"pgn:{pgn}", workers=1) as s:
        sizes = []
        while (batch := s.next()) is not None:
            sizes.append(len(batch))
    assert sizes == [3, 3, 1]


def test_stream_rejects_bad_requests():
    with pytest.raises(ValueError, match="'random' source only"):
        GameStream("othello", 4, source="stockfish")
    with pytest.raises(ValueError, match="unknown game"):
        GameStream("go", 4)
    with pytest.raises(ValueError, match="batch_games"):
        GameStream("chess", 0)


def test_an_engine_that_dies_gives_a_clear_error(tmp_path):
    fake = tmp_path / "stockfish"
    fake.write_text("#!/bin/sh\nread line\nexit 3\n")
    fake.chmod(0o755)
    from boardlens.games.chess.sources import close_engines

    try:
        with pytest.raises(RuntimeError, match=r"stockfish exited \(code 3\)"):
            generate(parse_source("stockfish", engine=str(fake)), 1, (0,))
    finally:
        close_engines()

"""ChessGPT transcripts, tokenizer, PGN reading and the labelled '.' positions."""

import chess
import numpy as np
import pytest
import zstandard

from boardlens.games.chess import tokenizer
from boardlens.games.chess.transcripts import (
    dot_positions,
    format_transcript,
    parse_transcript,
    pgn_transcripts,
    random_game,
    replay,
)

PGN = """[Event "test"]
[Result "1-0"]

1. e4 e5 2. Qh5 Nc6 3. Bc4 Nf6 4. Qxf7# 1-0

[Event "promotion"]
[SetUp "1"]
[FEN "8/P7/8/8/8/8/8/k6K w - - 0 1"]

1. a8=Q+ 1-0

[Event "castles"]
[Result "*"]

1. e4 e5 2. Nf3 Nc6 3. Bc4 Bc5 4. O-O d6 5. d3 Bg4 6. h3 Bh5 7. g4 Qd7 8. gxh5 O-O-O *
"""


def test_format_matches_chessgpt():
    assert format_transcript(["e4", "e5", "Nf3", "Nc6", "Bb5", "a6"]) == ";1.e4 e5 2.Nf3 Nc6 3.Bb5 a6"
    assert format_transcript([]) == ";"


def test_tokenizer_round_trip_and_errors():
    text = ";1.e4 e5 2.Qh5 Nc6 3.Bc4 Nf6 4.Qxf7# 8.gxh5 O-O-O 9.a8=Q+"
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int64 and tokenizer.decode(ids) == text
    assert tokenizer.encode(";")[0] == 15 and tokenizer.encode(".")[0] == 4
    with pytest.raises(ValueError, match="vocabulary"):
        tokenizer.encode(";1.e4 {comment}")
    with pytest.raises(ValueError):
        tokenizer.decode(np.array([32]))


def test_pgn_plain_and_zst(tmp_path):
    plain = tmp_path / "g.pgn"
    plain.write_text(PGN)
    games = list(pgn_transcripts(plain))
    # The promotion game starts from a FEN, not the initial position: skipped.
    assert games == [";1.e4 e5 2.Qh5 Nc6 3.Bc4 Nf6 4.Qxf7#",
                     ";1.e4 e5 2.Nf3 Nc6 3.Bc4 Bc5 4.O-O d6 5.d3 Bg4 6.h3 Bh5 7.g4 Qd7 8.gxh5 O-O-O"]
    packed = tmp_path / "g.pgn.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(PGN.encode()))
    assert list(pgn_transcripts(packed, max_games=1)) == games[:1]
    assert [len(g) for g in pgn_transcripts(plain, max_chars=20)] == [20, 20]
    with pytest.raises(FileNotFoundError):
        list(pgn_transcripts(tmp_path / "missing.pgn"))


def test_parse_and_replay_detect_cut_and_illegal_moves():
    sans, cut = parse_transcript(";1.e4 e5 2.Nf3 Nc")
    assert sans == ["e4", "e5", "Nf3"] and cut
    sans, cut = parse_transcript(";1.e4 e5 ")
    assert sans == ["e4", "e5"] and not cut
    with pytest.raises(ValueError, match="illegal"):
        replay(["e4", "e4"])
    with pytest.raises(ValueError, match="starts with"):
        parse_transcript("1.e4")


def test_random_games_are_legal_and_cut_to_256():
    rng = np.random.default_rng(0)
    for _ in range(30):
        text = random_game(rng)
        assert text.startswith(";1.") and len(text) <= 256
        tokenizer.encode(text)
        sans, _ = parse_transcript(text)
        boards = replay(sans)  # raises on any illegal move
        assert len(boards) == len(sans) + 1
    assert sum(len(random_game(rng)) == 256 for _ in range(20)) >= 15  # most games outlast 256 chars


def test_dot_positions_are_white_to_move_boards_before_the_chunk():
    text = ";1.e4 e5 2.Nf3 Nc6 3.Bb5"
    dots = dot_positions(text)
    assert [i for i, _ in dots] == [2, 10, 20]
    assert dots[0][1].fen() == chess.STARTING_FEN
    b = chess.Board()
    for san in ("e4", "e5", "Nf3", "Nc6"):
        b.push_san(san)
    assert dots[2][1].fen() == b.fen() and dots[2][1].turn == chess.WHITE
    long = random_game(np.random.default_rng(1))
    assert len(dot_positions(long)) == min(20, long.count("."))
    assert all(board.turn == chess.WHITE for _, board in dot_positions(long))

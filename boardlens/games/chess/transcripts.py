"""ChessGPT transcripts: `;1.e4 e5 2.Nf3 Nc6 3.Bb5 a6`.

A leading ';', the move number and '.' with no space before White's move, one space between
half-moves, SAN with '+', '#', '=Q', 'O-O', 'O-O-O'. Games are cut to their first
`GAME_CHARS` (256) characters, as the paper's SAE work did, so the last move may be cut too.

Sources here: random legal games (fast, no engine) and the user's PGN files (plain or
`.zst`, e.g. a Lichess database export). Labelled positions are the '.' characters: the
board there is the board after every complete half-move before that chunk (White to move).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import chess
import chess.pgn
import numpy as np

from boardlens.games.chess.tokenizer import GAME_CHARS


def format_transcript(sans: list[str]) -> str:
    """SAN half-moves -> ';1.e4 e5 2.Nf3 ...' (untruncated)."""
    parts = [";"]
    for i, san in enumerate(sans):
        if i % 2 == 0:
            parts.append(("" if i == 0 else " ") + f"{i // 2 + 1}.{san}")
        else:
            parts.append(" " + san)
    return "".join(parts)


def move_chars(n: int, san: str) -> int:
    """Characters half-move number n (0-based) adds to a transcript: ' ', 'N.' and the SAN."""
    return len(san) + (n > 0) + (len(f"{n // 2 + 1}.") if n % 2 == 0 else 0)


def parse_transcript(text: str) -> tuple[list[str], bool]:
    """Transcript -> (complete SAN half-moves, whether the last chunk was cut off).

    A chunk is complete when a space follows it; the final chunk of a cut game is not.
    """
    if not text.startswith(";"):
        raise ValueError("a ChessGPT transcript starts with ';'")
    chunks = text[1:].split(" ")
    sans = []
    for chunk in chunks[:-1]:
        sans.append(chunk.split(".", 1)[1] if "." in chunk else chunk)
    last = chunks[-1]
    return sans, bool(last)


def replay(sans: list[str]) -> list[chess.Board]:
    """Boards after each half-move (index 0 = start); raises ValueError on an illegal move."""
    board = chess.Board()
    boards = [board.copy(stack=False)]
    for i, san in enumerate(sans):
        try:
            board.push_san(san)
        except ValueError as e:
            raise ValueError(f"half-move {i + 1} ({san!r}) is illegal or malformed: {e}") from e
        boards.append(board.copy(stack=False))
    return boards


def random_game(rng: np.random.Generator, max_chars: int = GAME_CHARS) -> str:
    """Uniformly random legal moves until the transcript is max_chars long or the game ends."""
    board = chess.Board()
    sans: list[str] = []
    length = 1
    while length < max_chars and not board.is_game_over(claim_draw=False):
        moves = list(board.legal_moves)
        move = moves[int(rng.integers(len(moves)))]
        san = board.san(move)
        length += move_chars(len(sans), san)
        sans.append(san)
        board.push(move)
    return format_transcript(sans)[:max_chars]


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".zst":
        try:
            import zstandard
        except ImportError as e:
            raise RuntimeError("reading .zst needs the 'zstandard' package") from e
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
        return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def pgn_transcripts(path: str | Path, max_games: int | None = None,
                    max_chars: int = GAME_CHARS) -> Iterator[str]:
    """Transcripts of the main lines of a PGN file (plain or .zst), cut to max_chars.

    Games without moves, or whose moves python-chess flags as illegal, are skipped.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such PGN file")
    done = 0
    with _open_text(path) as f:
        while max_games is None or done < max_games:
            game = chess.pgn.read_game(f)
            if game is None:
                return
            if game.errors:
                continue
            board = game.board()
            if board.fen() != chess.STARTING_FEN:
                continue  # ChessGPT games start from the initial position
            sans = []
            for move in game.mainline_moves():
                sans.append(board.san(move))
                board.push(move)
            if sans:
                done += 1
                yield format_transcript(sans)[:max_chars]


def dot_positions(text: str, max_dots: int = 20) -> list[tuple[int, chess.Board]]:
    """(char index of each '.', board there) for the first max_dots dots: White to move."""
    sans, _ = parse_transcript(text)
    boards = replay(sans)
    out: list[tuple[int, chess.Board]] = []
    half_moves = 0  # complete half-moves before the current chunk
    for i, ch in enumerate(text):
        if ch == " ":
            half_moves += 1
        elif ch == "." and len(out) < max_dots:
            out.append((i, boards[half_moves]))
    return out

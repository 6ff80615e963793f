"""Where chess games come from: random legal play, Stockfish self-play, or the user's PGN.

A source is named by a short spec string, used by `boardlens produce --source`:

    random                              uniformly random legal moves (fast, no engine)
    stockfish                           Stockfish self-play, defaults below
    stockfish:nodes=16-256,opening=0-8  node budget per move and random opening plies, per game
    pgn:/data/lichess_2024-01.pgn.zst   the user's games (plain or .zst), read in file order

Stockfish games are varied by a random opening (k uniformly random legal plies, k drawn per
game from `opening`) and a per-game node budget drawn log-uniformly from `nodes`: low budgets
play plausible but imperfect chess, as in the paper's training data. Each worker process
keeps one engine (1 thread, 16 MB hash) and starts a new UCI game per game, so the same seed
gives the same games.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import chess
import chess.engine
import numpy as np

from boardlens.games.chess.tokenizer import GAME_CHARS
from boardlens.games.chess.transcripts import format_transcript, random_game

KINDS = ("random", "stockfish", "pgn")


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    path: str = ""  # pgn: the file
    nodes: tuple[int, int] = (16, 256)  # stockfish: node budget per move, per game (log-uniform)
    opening: tuple[int, int] = (0, 8)  # stockfish: random opening plies, per game (uniform)
    engine: str = ""  # stockfish binary; "" = look it up

    @property
    def generated(self) -> bool:
        """True when games are made from a seed (random, stockfish), False for a file."""
        return self.kind != "pgn"

    def __str__(self) -> str:
        if self.kind == "pgn":
            return f"pgn:{self.path}"
        if self.kind == "stockfish":
            return f"stockfish:nodes={self.nodes[0]}-{self.nodes[1]},opening={self.opening[0]}-{self.opening[1]}"
        return self.kind


def _range(key: str, value: str) -> tuple[int, int]:
    lo, _, hi = value.partition("-")
    try:
        r = (int(lo), int(hi or lo))
    except ValueError as e:
        raise ValueError(f"stockfish option {key}={value!r}: expected N or N-M") from e
    if r[0] > r[1] or r[0] < (1 if key == "nodes" else 0):
        raise ValueError(f"stockfish option {key}={value!r}: bad range")
    return r


def parse_source(text: str, engine: str = "") -> SourceSpec:
    """'random' | 'stockfish[:nodes=N-M,opening=N-M]' | 'pgn:PATH' -> SourceSpec."""
    kind, _, rest = text.partition(":")
    if kind == "random" and not rest:
        return SourceSpec("random")
    if kind == "pgn":
        if not rest:
            raise ValueError("pgn source needs a path: pgn:/path/to/games.pgn[.zst]")
        if not Path(rest).is_file():
            raise ValueError(f"pgn source {rest}: no such file")
        return SourceSpec("pgn", path=rest)
    if kind == "stockfish":
        opts: dict = {"engine": engine}
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            if key not in ("nodes", "opening"):
                raise ValueError(f"unknown stockfish option {key!r} (known: nodes, opening)")
            opts[key] = _range(key, value)
        spec = SourceSpec("stockfish", **opts)
        stockfish_path(spec.engine)  # fail now, not in a worker
        return spec
    raise ValueError(f"unknown game source {text!r}; expected one of: random, stockfish[:...], pgn:PATH")


def stockfish_path(engine: str = "") -> str:
    """The Stockfish binary: `engine` if given, else PATH, else Debian's /usr/games/stockfish."""
    found = engine or shutil.which("stockfish") or ("/usr/games/stockfish" if os.path.exists("/usr/games/stockfish") else "")
    if not found or not os.access(found, os.X_OK):
        raise ValueError(f"Stockfish not found ({engine or 'not on PATH or in /usr/games'}); install it "
                         "(apt-get install stockfish, or `make deps`) or pass its path")
    return found


_ENGINES: dict[str, chess.engine.SimpleEngine] = {}  # one per process, per binary


def _engine(path: str) -> chess.engine.SimpleEngine:
    if path not in _ENGINES:
        if not _ENGINES:
            atexit.register(close_engines)  # the engine's I/O thread would keep the process alive
        eng = chess.engine.SimpleEngine.popen_uci(path)
        eng.configure({"Threads": 1, "Hash": 16})
        _ENGINES[path] = eng
    return _ENGINES[path]


def close_engines() -> None:
    while _ENGINES:
        _ENGINES.popitem()[1].quit()


def stockfish_game(spec: SourceSpec, rng: np.random.Generator, game_key: object,
                   max_chars: int = GAME_CHARS) -> str:
    """One self-play game, stopped once its transcript reaches max_chars (then cut)."""
    engine = _engine(stockfish_path(spec.engine))
    lo, hi = spec.nodes
    nodes = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))))
    nodes = min(max(nodes, lo), hi)
    board = chess.Board()
    sans: list[str] = []
    opening = int(rng.integers(spec.opening[0], spec.opening[1] + 1))
    while len(format_transcript(sans)) < max_chars and not board.is_game_over(claim_draw=False):
        if len(sans) < opening:
            moves = list(board.legal_moves)
            move = moves[int(rng.integers(len(moves)))]
        else:
            move = engine.play(board, chess.engine.Limit(nodes=nodes), game=game_key).move
        sans.append(board.san(move))
        board.push(move)
    return format_transcript(sans)[:max_chars]


def generate(spec: SourceSpec, num_games: int, seed: tuple[int, ...]) -> list[str]:
    """num_games transcripts made from `seed` (a random or stockfish spec), deterministic."""
    rng = np.random.default_rng(list(seed))
    if spec.kind == "random":
        return [random_game(rng) for _ in range(num_games)]
    if spec.kind == "stockfish":
        return [stockfish_game(spec, rng, game_key=(*seed, g)) for g in range(num_games)]
    raise ValueError(f"{spec}: games from a file are read, not generated")

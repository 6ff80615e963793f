"""Where chess games come from: random legal play, Stockfish self-play, or the user's PGN.

A source is named by a short spec string, used by `boardlens produce --source`:

    random                              uniformly random legal moves (fast, no engine)
    stockfish                           Stockfish self-play, defaults below
    stockfish:nodes=16-256,opening=0-8  node budget per move and random opening plies, per game
    pgn:/data/lichess_2024-01.pgn.zst   the user's games (plain or .zst), read in file order

Stockfish games are varied by a random opening (k uniformly random legal plies, k drawn per
game from `opening`) and a per-game node budget drawn log-uniformly from `nodes`: low budgets
play plausible but imperfect chess. Each worker process keeps one engine (1 thread, 16 MB
hash, spoken to over pipes) and starts a new UCI game per game, so the same seed gives the
same games.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import chess
import numpy as np

from boardlens.games.chess.tokenizer import GAME_CHARS
from boardlens.games.chess.transcripts import format_transcript, move_chars, random_game

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


class UCIEngine:
    """A minimal UCI client over pipes: new game, best move at a node budget.

    About twice the games/s of python-chess's SimpleEngine on short searches, whose per-move
    cost is dominated by its asyncio round trip (benchmarks/chess_sources.py measures both).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._send("uci")
        self._until("uciok")
        self._send("setoption name Threads value 1")
        self._send("setoption name Hash value 16")
        self.new_game()

    def _send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError as e:
            raise RuntimeError(f"{self.path} exited (code {self.proc.poll()})") from e

    def _until(self, prefix: str) -> str:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.path} exited (code {self.proc.wait()}) before '{prefix}'")
            if line.startswith(prefix):
                return line

    def new_game(self) -> None:
        """Forget the previous game (clears the hash, so a seed replays the same games)."""
        self._send("ucinewgame")
        self._send("isready")
        self._until("readyok")

    def best_move(self, uci_moves: list[str], nodes: int) -> chess.Move:
        self._send("position startpos" + (" moves " + " ".join(uci_moves) if uci_moves else ""))
        self._send(f"go nodes {nodes}")
        return chess.Move.from_uci(self._until("bestmove").split()[1])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send("quit")
                self.proc.wait(timeout=5)
            except (RuntimeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


_ENGINES: dict[str, UCIEngine] = {}  # one per process, per binary


def _engine(path: str) -> UCIEngine:
    if path not in _ENGINES:
        if not _ENGINES:
            atexit.register(close_engines)
        _ENGINES[path] = UCIEngine(path)
    return _ENGINES[path]


def close_engines() -> None:
    while _ENGINES:
        _ENGINES.popitem()[1].close()


def stockfish_game(spec: SourceSpec, rng: np.random.Generator, max_chars: int = GAME_CHARS) -> str:
    """One self-play game, stopped once its transcript reaches max_chars (then cut)."""
    engine = _engine(stockfish_path(spec.engine))
    engine.new_game()
    lo, hi = spec.nodes
    nodes = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))))
    nodes = min(max(nodes, lo), hi)
    board = chess.Board()
    sans: list[str] = []
    played: list[str] = []
    length = 1  # ';'
    opening = int(rng.integers(spec.opening[0], spec.opening[1] + 1))
    while length < max_chars and not board.is_game_over(claim_draw=False):
        if len(sans) < opening:
            moves = list(board.legal_moves)
            move = moves[int(rng.integers(len(moves)))]
        else:
            move = engine.best_move(played, nodes)
        san = board.san(move)
        length += move_chars(len(sans), san)
        sans.append(san)
        played.append(move.uci())
        board.push(move)
    return format_transcript(sans)[:max_chars]


def generate(spec: SourceSpec, num_games: int, seed: tuple[int, ...]) -> list[str]:
    """num_games transcripts made from `seed` (a random or stockfish spec), deterministic."""
    rng = np.random.default_rng(list(seed))
    if spec.kind == "random":
        return [random_game(rng) for _ in range(num_games)]
    if spec.kind == "stockfish":
        return [stockfish_game(spec, rng) for _ in range(num_games)]
    raise ValueError(f"{spec}: games from a file are read, not generated")

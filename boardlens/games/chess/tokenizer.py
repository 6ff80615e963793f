"""ChessGPT's 32-character vocabulary: one token per character, no BOS or PAD.

    ' ':0 '#':1 '+':2 '-':3 '.':4 '0'..'9':5..14 ';':15 '=':16 'B':17 'K':18 'N':19 'O':20
    'Q':21 'R':22 'a'..'h':23..30 'x':31          (meta.pkl of adamkarvonen/chess_llm_interpretability)
"""

from __future__ import annotations

import numpy as np

CHARS = " #+-.0123456789;=BKNOQRabcdefghx"
STOI = {c: i for i, c in enumerate(CHARS)}
VOCAB_SIZE = len(CHARS)  # 32
CONTEXT = 1023  # ChessGPT's block size in characters
GAME_CHARS = 256  # the SAE work used the first 256 characters of each game
_LOOKUP = np.full(256, -1, dtype=np.int64)
_LOOKUP[np.frombuffer(CHARS.encode(), dtype=np.uint8)] = np.arange(VOCAB_SIZE)


def encode(text: str) -> np.ndarray:
    """Transcript -> (n,) int64 token ids; a character outside the vocabulary is an error."""
    raw = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)
    ids = _LOOKUP[raw]
    if (ids < 0).any():
        bad = sorted({text[i] for i in np.flatnonzero(ids < 0)})
        raise ValueError(f"characters outside the ChessGPT vocabulary: {bad}")
    return ids


def decode(ids: np.ndarray) -> str:
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
        raise ValueError(f"token ids must be in 0..{VOCAB_SIZE - 1}")
    return "".join(CHARS[i] for i in ids)

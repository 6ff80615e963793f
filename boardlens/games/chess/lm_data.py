"""Language-model data for chess: character batches and legal moves in sampled continuations.

A training sequence is the first `GAME_CHARS` + 1 characters of a game: inputs are characters
0..255, targets 1..256. Games that end sooner are padded with ' ' and their missing targets
ignored (-100).

The legal-move rate asks the model to continue a held-out game from a move boundary (just
after 'N.' with White to move, or after the space that follows White's move) and samples
characters until the next space; the move counts as legal only if it is exactly the SAN of a
legal move in that position (so 'Nf3' where 'Nf3+' is due counts as wrong).
"""

from __future__ import annotations

from typing import NamedTuple

import chess
import numpy as np
import torch

from boardlens.games.chess import tokenizer
from boardlens.games.chess.families import FAMILIES, label_board
from boardlens.games.chess.tokenizer import GAME_CHARS
from boardlens.games.chess.transcripts import dot_positions, parse_transcript, random_game, replay
from boardlens.games.labelled import LabelledGames

SPACE = tokenizer.STOI[" "]
MAX_SAN = 7  # 'exd8=Q+' is the longest SAN the format produces
MAX_DOTS = 20  # labelled positions per game, as in the paper


def encode_padded(texts: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Transcripts -> ((G, length) int64 ids padded with ' ', (G,) int lengths, cut to length)."""
    ids = np.full((len(texts), length), SPACE, dtype=np.int64)
    lengths = np.zeros(len(texts), dtype=np.int64)
    for g, text in enumerate(texts):
        row = tokenizer.encode(text[:length])
        ids[g, : len(row)] = row
        lengths[g] = len(row)
    return ids, lengths


def training_batch(rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh random games -> inputs (B, 256) and next-character targets (B, 256), -100 = none."""
    return next_chars([random_game(rng, GAME_CHARS + 1) for _ in range(batch_size)])


def next_chars(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids, lengths = encode_padded(texts, GAME_CHARS + 1)
    toks = torch.from_numpy(ids)
    x, y = toks[:, :-1].clone(), toks[:, 1:].clone()
    y[torch.arange(GAME_CHARS)[None, :] >= torch.from_numpy(lengths)[:, None] - 1] = -100
    return x, y


def piece_targets(texts: list[str]) -> torch.Tensor:
    """(B, 256, 64) piece class per square at every '.' of the inputs (White to move: where the
    evaluator labels), as the producer labels them; -100 at every other character."""
    from boardlens.games.chess.families import piece

    board = torch.full((len(texts), GAME_CHARS, 64), -100, dtype=torch.long)
    for g, text in enumerate(texts):
        for pos, b in dot_positions(text[:GAME_CHARS], max_dots=GAME_CHARS):
            board[g, pos] = torch.from_numpy(piece(b).reshape(64).astype(np.int64))
    return board


def training_batch_with_board(rng: np.random.Generator, batch_size: int):
    """training_batch plus piece_targets of the same games (`lm train --board-head`)."""
    texts = [random_game(rng, GAME_CHARS + 1) for _ in range(batch_size)]
    return (*next_chars(texts), piece_targets(texts))


class Prompt(NamedTuple):
    text: str  # transcript up to a move boundary
    board: chess.Board  # the position there


def prompts(texts: list[str], rng: np.random.Generator, max_chars: int = GAME_CHARS - MAX_SAN - 1) -> list[Prompt]:
    """One prompt per game at a random move boundary (after 'N.' or after White's move)."""
    out = []
    for text in texts:
        text = text[:max_chars]
        sans, _ = parse_transcript(text)  # complete half-moves only; a cut tail is dropped
        boards = replay(sans)
        cuts = []  # (char index just after the boundary, half-moves before it)
        half = 0
        for i, ch in enumerate(text):
            if ch == ".":
                cuts.append((i + 1, half))
            elif ch == " ":
                half += 1
                if half % 2 == 1:  # a space after White's move: Black to move
                    cuts.append((i + 1, half))
        cuts = [(c, h) for c, h in cuts if h < len(boards) and not boards[h].is_game_over()]
        if not cuts:
            continue
        c, h = cuts[int(rng.integers(len(cuts)))]
        out.append(Prompt(text[:c], boards[h]))
    return out


def eval_prompts(num_games: int, seed: int) -> list[Prompt]:
    """Held-out prompts from random games with their own seed stream."""
    rng = np.random.default_rng(seed)
    return prompts([random_game(rng) for _ in range(num_games)], rng)


@torch.no_grad()
def sample_moves(model, batch: list[Prompt], generator: torch.Generator | None = None,
                 temperature: float = 1.0) -> list[str]:
    """Sample one half-move per prompt: characters until a space (or MAX_SAN + 1 of them).

    Prompts are right-padded in one batch; causal attention makes the padding invisible to
    each prompt's own last position. temperature 0 = greedy.
    """
    device = next(model.parameters()).device
    B = len(batch)
    ids, ends = encode_padded([p.text for p in batch], GAME_CHARS)
    toks = torch.from_numpy(ids).to(device)
    ends_t = torch.from_numpy(ends).to(device)
    out = [[] for _ in range(B)]
    active = np.ones(B, dtype=bool)
    for _ in range(MAX_SAN + 1):
        if not active.any() or int(ends.max()) >= GAME_CHARS:
            break
        logits, _ = model(toks[:, : int(ends.max())])
        last = logits[torch.arange(B, device=device), ends_t - 1].float()  # (B, V)
        if temperature == 0:
            nxt = last.argmax(-1)
        else:
            probs = torch.softmax(last / temperature, -1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(device)
        nxt_np = nxt.cpu().numpy()
        for b in np.flatnonzero(active):
            if nxt_np[b] == SPACE:
                active[b] = False
                continue
            out[b].append(tokenizer.CHARS[nxt_np[b]])
            toks[b, ends[b]] = nxt[b]
            ends[b] += 1
        ends_t = torch.from_numpy(ends).to(device)
    return ["".join(chars) for chars in out]


def legal_san_set(board: chess.Board) -> set[str]:
    return {board.san(m) for m in board.legal_moves}


def legal_move_rate(model, prompt_set: list[Prompt], batch_size: int = 256, seed: int = 0,
                    temperature: float = 1.0) -> float:
    """Fraction of sampled continuations that are exactly a legal move's SAN."""
    gen = torch.Generator().manual_seed(seed)
    legal = 0
    for s in range(0, len(prompt_set), batch_size):
        chunk = prompt_set[s : s + batch_size]
        for p, move in zip(chunk, sample_moves(model, chunk, gen, temperature), strict=True):
            legal += move in legal_san_set(p.board)
    return legal / max(len(prompt_set), 1)


def labelled_transcripts(texts: list[str], max_dots: int = MAX_DOTS) -> LabelledGames:
    """Transcripts -> tokens (G, 256) and every family's labels at the first max_dots '.'s.

    Label slot p of game g is the p-th '.' (label_pos = its character index), where White is
    to move; unused slots have label_pos -1 and zero labels.
    """
    G = len(texts)
    tokens, lengths = encode_padded(texts, GAME_CHARS)
    label_pos = np.full((G, max_dots), -1, dtype=np.int16)
    labels = {f.name: np.zeros((G, max_dots, *f.shape), dtype=np.int8) for f in FAMILIES}
    for g, text in enumerate(texts):
        for p, (pos, board) in enumerate(dot_positions(text[:GAME_CHARS], max_dots)):
            label_pos[g, p] = pos
            for name, value in label_board(board).items():
                labels[name][g, p] = value
    return LabelledGames(tokens, lengths.astype(np.int16), label_pos, labels)

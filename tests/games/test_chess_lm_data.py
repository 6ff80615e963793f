"""Chess LM data: training batches, move-boundary prompts, batched sampling."""

import numpy as np
import torch

from boardlens.games.chess import lm_data, tokenizer
from boardlens.games.chess.tokenizer import GAME_CHARS
from boardlens.games.chess.transcripts import random_game
from boardlens.lm.model import GPT, GPTConfig


def test_training_batch_shifts_and_masks_the_padding():
    x, y = lm_data.training_batch(np.random.default_rng(0), 8)
    assert x.shape == y.shape == (8, GAME_CHARS) and x.dtype == torch.int64
    assert (x[:, 0] == tokenizer.STOI[";"]).all()
    valid = y != -100
    assert (y[:, :-1][valid[:, :-1]] == x[:, 1:][valid[:, :-1]]).all()  # next-character targets
    # A row is valid up to its game's end, then ignored.
    for row in valid:
        n = int(row.sum())
        assert row[:n].all() and not row[n:].any()


def test_prompts_end_at_move_boundaries_where_the_game_move_is_legal():
    rng = np.random.default_rng(1)
    texts = [random_game(rng) for _ in range(40)]
    prompts = lm_data.prompts(texts, np.random.default_rng(2))
    assert len(prompts) == 40
    sides = set()
    for text, p in zip(texts, prompts, strict=True):
        assert text.startswith(p.text) and p.text[-1] in ". "
        sides.add(p.board.turn)
        actual = text[len(p.text):].split(" ", 1)[0]  # what the game played there
        assert actual in lm_data.legal_san_set(p.board)
    assert sides == {True, False}  # both White and Black move boundaries occur


def test_batched_sampling_matches_one_prompt_at_a_time():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=GAME_CHARS, n_layer=2, n_head=2, n_embd=32)).eval()
    prompts = lm_data.eval_prompts(6, seed=3)
    together = lm_data.sample_moves(model, prompts, temperature=0)
    alone = [lm_data.sample_moves(model, [p], temperature=0)[0] for p in prompts]
    assert together == alone
    assert all(" " not in m and len(m) <= lm_data.MAX_SAN + 1 for m in together)
    rate = lm_data.legal_move_rate(model, prompts, temperature=0)
    assert rate == sum(m in lm_data.legal_san_set(p.board) for p, m in zip(prompts, together, strict=True)) / 6


def test_bundled_chess_model_plays_legal_moves_and_its_control_does_not():
    from boardlens.lm.checkpoint import load_model
    from boardlens.services.config import bundled_model

    prompts = lm_data.eval_prompts(32, seed=99)
    trained, _ = load_model(bundled_model("chess"))
    control, _ = load_model(bundled_model("chess") + "-random")
    assert lm_data.legal_move_rate(trained, prompts, temperature=0) > 0.5
    assert lm_data.legal_move_rate(control, prompts, temperature=0) < 0.1

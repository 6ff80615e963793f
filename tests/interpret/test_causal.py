"""Board edits against the rules, interventions against their definitions, faithfulness end to end."""

import chess
import numpy as np
import pytest
import torch

from boardlens.games.chess import tokenizer as chess_tok
from boardlens.games.chess.edits import ChessBoardEditor
from boardlens.games.chess.families import PIECE_FAMILY
from boardlens.games.othello import tokenizer as oth_tok
from boardlens.games.othello.edits import OthelloBoardEditor
from boardlens.games.othello.engine import play_random
from boardlens.games.othello.labels import FAMILIES as OTHELLO_FAMILIES
from boardlens.interpret.faithfulness import FACTORS, faithfulness
from boardlens.interpret.interventions import MLPSite, SAESite
from boardlens.lm.model import GPT, GPTConfig
from boardlens.sae.archs.relu import AutoEncoder

MTE = OTHELLO_FAMILIES[0]

DIRS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _legal_by_hand(board: np.ndarray) -> set[int]:
    """Squares where 'mine' (1) may play on an 8x8 board of 0 empty / 1 mine / 2 theirs."""
    out = set()
    for r in range(8):
        for c in range(8):
            if board[r, c]:
                continue
            for dr, dc in DIRS:
                rr, cc, seen = r + dr, c + dc, 0
                while 0 <= rr < 8 and 0 <= cc < 8 and board[rr, cc] == 2:
                    rr, cc, seen = rr + dr, cc + dc, seen + 1
                if seen and 0 <= rr < 8 and 0 <= cc < 8 and board[rr, cc] == 1:
                    out.add(r * 8 + c)
                    break
    return out


def test_othello_edit_gives_the_rules_legal_moves_on_both_boards():
    from boardlens.games.othello.lm_data import labelled_games

    g = labelled_games(np.random.default_rng(3), 6)
    boards, checked = OthelloBoardEditor(), 0
    rng = np.random.default_rng(0)
    for game in range(6):
        for pos in range(0, int(g.lengths[game]) - 1, 7):
            state = g.labels["mine_theirs_empty"][game, pos]  # (8, 8): 0 empty, 1 mine, 2 theirs
            index = int(rng.integers(MTE.num_bsps))
            cell, cls = MTE.bsp(index)
            task = boards.edit(torch.from_numpy(g.tokens[game, : pos + 1]), MTE, index)
            if state.reshape(-1)[cell] == cls:
                assert task is None  # the BSP already holds: nothing to edit
                continue
            edited = state.copy().reshape(-1)
            edited[cell] = cls
            want_real = _legal_by_hand(state)
            want_edit = _legal_by_hand(edited.reshape(8, 8))
            to_tokens = lambda sq: {int(t) for t in oth_tok.encode(np.array(sorted(sq - set(oth_tok.CENTRE)), dtype=np.int64))}  # noqa: E731
            assert task.real == to_tokens(want_real) and task.edited == to_tokens(want_edit)
            checked += 1
    assert checked > 10


def test_othello_edit_needs_a_next_move_and_an_editable_family():
    rec = play_random(1, seed=5)
    n = int(rec.lengths[0])
    toks = torch.from_numpy(oth_tok.encode(rec.moves[0, :n]))
    assert OthelloBoardEditor().edit(toks, MTE, 0 if rec.black[0, n - 1] else 1) is None  # game over
    # legal_moves: the legal set gains the square (None where it is legal already)
    legal = OTHELLO_FAMILIES[1]
    task = OthelloBoardEditor().edit(toks[:1], legal, 0)  # A0 is never legal after one move
    assert task.edited == task.real | {int(oth_tok.encode(np.array([0]))[0])}
    first_legal = int(np.flatnonzero(np.unpackbits(np.array([rec.legal[0, 0]]).view(np.uint8), bitorder="little"))[0])
    assert OthelloBoardEditor().edit(toks[:1], legal, first_legal) is None


def _chess_prefix(sans: list[str]) -> torch.Tensor:
    from boardlens.games.chess.transcripts import format_transcript

    text = format_transcript(sans) + f" {len(sans) // 2 + 1}."
    return torch.from_numpy(chess_tok.encode(text))


def _board(sans):
    b = chess.Board()
    for san in sans:
        b.push_san(san)
    return b


def test_chess_edit_changes_legal_sans_and_skips_invalid_boards():
    toks = _chess_prefix(["e4", "e5"])
    kb = ChessBoardEditor()
    # a white knight on d5: Nxc7, Nf6+ ... become legal
    task = kb.edit(toks, PIECE_FAMILY, chess.D5 * 12 + 7)  # class 8 = 'N' (kept slot 7)
    assert PIECE_FAMILY.class_names[PIECE_FAMILY.bsp(chess.D5 * 12 + 7)[1]] == "N"
    assert "Nxc7+" in task.edited and "Nxc7+" not in task.real and "e5" not in task.edited
    # boards python-chess calls invalid are skipped: a second black king, a pawn on the 8th rank
    assert kb.edit(toks, PIECE_FAMILY, chess.E3 * 12 + PIECE_FAMILY.kept_classes.index(0)) is None
    assert kb.edit(toks, PIECE_FAMILY, chess.A8 * 12 + PIECE_FAMILY.kept_classes.index(7)) is None
    # the BSP already holds (White's king on e1): nothing to edit
    assert kb.edit(toks, PIECE_FAMILY, chess.E1 * 12 + PIECE_FAMILY.kept_classes.index(12)) is None
    # a 17th white piece is accepted: the rules still say which moves are legal
    assert task.real == {b.san(m) for b in [_board(["e4", "e5"])] for m in b.legal_moves}


def _tiny_model(vocab=61, layers=3):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=59, n_layer=layers, n_head=2, n_embd=32)).eval()


def test_sae_clamp_changes_only_the_chosen_latent_direction():
    model = _tiny_model()
    torch.manual_seed(1)
    ae = AutoEncoder(32, 64).eval()
    site = SAESite(ae, 1)
    toks = torch.randint(1, 61, (3, 10))
    _, clean = model(toks, resid_layers=(1,))
    values = torch.tensor([0.0, 2.0, -5.0])
    with site.clamp(model, 7, values):
        _, patched = model(toks, resid_layers=(1,))
    f = ae.encode(clean[1].reshape(-1, 32)).reshape(3, 10, -1)[..., 7]
    want = clean[1] + (values[:, None] - f)[..., None] * ae.decoder.weight[:, 7]
    assert torch.allclose(patched[1], want, atol=1e-5)
    # the hook is gone afterwards
    assert torch.allclose(model(toks, resid_layers=(1,))[1][1], clean[1])


def test_mlp_clamp_and_scale_set_the_neurons():
    model = _tiny_model()
    site = MLPSite(model, 2)
    toks = torch.randint(1, 61, (2, 8))
    seen = []

    def capture(_m, inputs):
        seen.append(inputs[0].clone())

    c_proj = model.transformer.h[2].mlp.c_proj
    handle = c_proj.register_forward_pre_hook(capture)
    model(toks)  # clean neurons
    handle.remove()
    with site.clamp(model, 5, torch.tensor([3.0, -1.0])):
        handle = c_proj.register_forward_pre_hook(capture)  # runs after the clamp's hook
        model(toks)
        handle.remove()
    alpha = torch.linspace(0, 2, site.width)
    with site.scale(model, alpha):
        handle = c_proj.register_forward_pre_hook(capture)
        model(toks)
        handle.remove()
    clean, clamped, scaled = seen
    want = clean.clone()
    want[0, :, 5], want[1, :, 5] = 3.0, -1.0
    assert torch.equal(clamped, want)
    assert torch.allclose(scaled, clean * alpha)


def test_faithfulness_of_a_planted_causal_latent():
    """A model whose move is read off one direction that one SAE latent writes: clamping that
    latent high makes it play the move only the edited board allows (F = 1); a latent writing
    an unread direction gets F = 0."""
    from boardlens.games.edits import MoveTask

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=61, block_size=59, n_layer=2, n_head=2, n_embd=32, norm="none")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # the residual is 0 everywhere: every logit 0, greedy = token 0
        model.lm_head.weight[9, 0] = 1.0  # token 9 wins once the residual has a positive e0 part
    ae = AutoEncoder(32, 4).eval()
    with torch.no_grad():
        ae.decoder.weight.zero_()
        ae.decoder.weight[0, 0] = 1.0  # latent 0 writes e0
        ae.decoder.weight[5, 1] = 1.0  # latent 1 writes e5, which nothing reads
    site = SAESite(ae, 0)
    tasks = [MoveTask(torch.randint(1, 61, (n,)), frozenset({3}), frozenset({9})) for n in (5, 9, 12, 7)]
    f0 = faithfulness(model, site, OthelloBoardEditor(), 0, 0, fmax=1.0, tasks=tasks)
    assert f0.rates == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0] and f0.score == 1.0
    assert f0.graded == pytest.approx(1.0)  # top-1 move = the edited board's only legal move
    f1 = faithfulness(model, site, OthelloBoardEditor(), 1, 0, fmax=1.0, tasks=tasks)
    assert f1.rates == [0.0] * len(FACTORS) and f1.score == 0.0


def test_chess_faithfulness_and_boards_run_on_the_bundled_model():
    """The chess path end to end on real transcripts: edits at '.' positions, greedy SANs
    written character by character under the clamp, board drawings."""
    from boardlens.interpret.faithfulness import draw_tasks
    from boardlens.lm.formats import load_any
    from boardlens.metrics.evalset import model_evalset
    from boardlens.metrics.references import random_sae
    from boardlens.registry import GAMES

    model, meta = load_any(str(__import__("pathlib").Path(__file__).resolve().parents[2] / "models/chess-gpt"))
    es = model_evalset(model.eval(), "chess", meta["sae_layer"], 3, 3, 7, 8, workers=0)
    from boardlens.interpret.report import test_prefixes

    prefixes = test_prefixes(es)
    assert all(chess_tok.decode(p[-1:].numpy()) == "." for p in prefixes)
    index = chess.F3 * 12 + PIECE_FAMILY.kept_classes.index(8)  # a white knight on f3
    tasks = draw_tasks(ChessBoardEditor(), prefixes, PIECE_FAMILY, index, 4, torch.Generator().manual_seed(0))
    assert tasks and all(t.edited != t.real for t in tasks)
    site = SAESite(random_sae(model.config.n_embd, 64), meta["sae_layer"])
    f = faithfulness(model, site, ChessBoardEditor(), 3, index, 1.0, tasks)
    assert f.prefixes == len(tasks) and len(f.rates) == len(FACTORS) and f.graded is None
    assert all(0.0 <= r <= 1.0 for r in f.rates)
    svg, caption = GAMES["chess"].draw_board(prefixes[0], chess.F3, None)
    assert svg.startswith("<svg") and "f3" in svg.lower()

"""Floor/ceiling references: the same positions re-read from a model, probes that find planted
structure (and not shuffled structure), the random SAE, and the floor SAEs read from a folder."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from boardlens.games.othello.lm_data import labelled_games
from boardlens.lm.model import GPT, GPTConfig
from boardlens.metrics import references as R
from boardlens.metrics.evalset import EvalSet
from boardlens.registry import GAMES
from boardlens.sae.io import load_sae, save_sae


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=61, block_size=59, n_layer=2, n_head=2, n_embd=16)).eval()


def evalset_of(model: GPT, layer: int, games: int = 12) -> EvalSet:
    es = EvalSet(GAMES["othello"].families(), games, games)
    features = R.residual(model, layer)
    rng, gid = np.random.default_rng(0), 0
    while not es.full:
        g = labelled_games(rng, 16)
        tokens = torch.from_numpy(g.tokens)
        es.add(features(tokens), tokens, torch.arange(gid, gid + 16), torch.from_numpy(g.lengths),
               torch.from_numpy(g.label_pos), {k: torch.from_numpy(v) for k, v in g.labels.items()})
        gid += 16
    return es


def test_recompute_reads_back_the_same_positions():
    model = tiny_gpt()
    es = evalset_of(model, 1)
    again = es.recompute(R.residual(model, 1), batch_games=5)  # other batching, same rows
    for split in ("train", "test"):
        stored = es.tensors()[split]
        assert torch.allclose(again[split]["x"], stored["x"], atol=1e-5)
        assert torch.allclose(again[split]["x_all"], stored["x_all"], atol=1e-5)
        assert again[split]["labels"] is stored["labels"]


def test_mlp_neurons_are_the_post_gelu_hidden_units():
    model = tiny_gpt()
    tokens = torch.randint(1, 61, (3, 10))
    got = R.mlp_neurons(model, 0)(tokens)
    assert got.shape == (3, 10, 64) and not got.requires_grad
    with torch.no_grad():
        block = model.transformer.h[0]
        x = model.transformer.wte(tokens) + model.transformer.wpe(torch.arange(10))
        x = x + block.attn(block.ln_1(x))
        want = F.gelu(block.mlp.c_fc(block.ln_2(x)))
    assert torch.allclose(got, want, atol=1e-6)


def test_probe_finds_planted_linear_structure_and_not_shuffled_labels():
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(2000, 6, generator=g) < 0.3
    x = labels.float() @ torch.randn(6, 12, generator=g) + 0.05 * torch.randn(2000, 12, generator=g)
    split = {"train": slice(0, 1000), "test": slice(1000, 2000)}
    t = {s: {"x": x[sl], "x_all": x[sl], "labels": {"fam": labels[sl]}} for s, sl in split.items()}
    ref = R.probe_reference(t)
    assert ref.name == "linear_probe" and ref.stats is None
    assert ref.scores["fam"].reconstruction > 0.98 and ref.scores["fam"].coverage > 0.98
    shuffled = {s: {**v, "labels": {"fam": v["labels"]["fam"][torch.randperm(1000, generator=g)]}}
                for s, v in t.items()}
    assert R.probe_reference(shuffled).scores["fam"].reconstruction < 0.5


def test_random_sae_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = R.random_sae(8, 32), R.random_sae(8, 32)
    assert torch.rand(1) == before
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_suite_scores_every_reference_and_picks_the_best_floor_sae(tmp_path):
    model = tiny_gpt()
    es = evalset_of(model, 1)
    torch.manual_seed(1)
    control = GPT(model.config).eval()  # stands in for the random-init control
    floor = tmp_path / "m" / "floor"
    for name, seed in (("a", 1), ("b", 2)):
        save_sae(floor, name, R.random_sae(16, 32, seed), {"control_model": "../m-random", "layer": 1,
                                                             "tokens": 1000})
    found = R.floor_saes(tmp_path / "m")
    assert [p.stem for p, _ in found] == ["a", "b"] and found[0][1]["layer"] == 1
    loaded = []
    suite = R.ReferenceSuite(es, model, 1, found, lambda path: loaded.append(path) or control, tmp_path / "m")
    refs = {name: compute() for name, compute in suite.fixed()}
    assert set(refs) == {"linear_probe", "mlp_neurons", "random_init_sae"}
    assert all(r.name == n for n, r in refs.items())
    assert loaded == [str(tmp_path / "m" / "../m-random")]  # the control is loaded once
    scores = []
    for path, _ in found:  # the floor is the better of the two, scored on the control's activations
        scores.append(R.sae_reference("x", load_sae(path)[0],
                                      es.recompute(R.residual(control, 1)), "").scores)
    best = max(scores, key=lambda s: sum(v.reconstruction for v in s.values()))
    assert refs["random_init_sae"].scores == best
    assert refs["mlp_neurons"].detail == "64 post-GELU MLP neurons of block 1"
    rnd = suite.random_sae(16, 32)
    assert rnd.name == "random_sae-32" and rnd.stats is not None and suite.random_sae(16, 32) is rnd
    assert json.loads((floor / "a.json").read_text())["arch"] == "relu"


def test_a_floor_sae_without_its_description_is_a_clear_error(tmp_path):
    save_sae(tmp_path / "floor", "a", R.random_sae(4, 8), {"layer": 1})  # no control_model

    with pytest.raises(ValueError, match="a.safetensors: its .json must name control_model"):
        R.floor_saes(tmp_path)
    assert R.floor_saes(tmp_path / "nothing-here") == []

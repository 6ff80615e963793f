"""Supervised metrics against their definitions (brute force) and planted features."""

import numpy as np
import torch

from boardlens.games.othello.engine import play_random
from boardlens.games.othello.labels import label_games
from boardlens.games.othello.lm_data import tokens_of
from boardlens.metrics import codes as C
from boardlens.metrics import supervised as S
from boardlens.metrics.evalset import EvalSet, evaluate_sae, is_test_game
from boardlens.metrics.unsupervised import recon_stats
from boardlens.registry import GAMES
from boardlens.sae.archs.relu import AutoEncoder


def brute_counts(f, labels, fmax):
    K = len(S.THRESHOLDS)
    on = torch.zeros(K, f.shape[1], labels.shape[1])
    active = torch.zeros(K, f.shape[1])
    for i, t in enumerate(S.THRESHOLDS):
        a = ((f > t * fmax) & (fmax > 0)).float()
        on[i] = a.T @ labels.float()
        active[i] = a.sum(0)
    return on, active


def test_counts_match_the_definition_dense_and_sparse():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=g)
    labels = torch.rand(500, 12, generator=g) < 0.3
    for shift in (0.0, -1.5):  # dense codes, then sparse ones
        ae = AutoEncoder(8, 40)
        with torch.no_grad():
            ae.encoder.bias += shift
            ae.encoder.weight[:3] = 0  # dead latents: never active
            ae.encoder.bias[:3] = -1
        f = ae.encode(x).detach()
        fmax = C.Codes(ae.encode, x).fmax()
        on, active = S.count_on(C.Codes(ae.encode, x, chunk=128), labels, fmax)
        bon, bactive = brute_counts(f, labels, fmax)
        assert torch.allclose(on, bon) and torch.allclose(active, bactive)
        assert active[:, :3].sum() == 0
        assert active[-1].sum() == 0  # t = 1.0: strictly above the max never happens


def test_dense_and_sparse_counting_paths_agree(monkeypatch):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(600, 8, generator=g)
    labels = torch.rand(600, 10, generator=g) < 0.3
    ae = AutoEncoder(8, 48)
    fmax = C.Codes(ae.encode, x).fmax()
    results = []
    for frac in (2.0, -1.0):  # never dense, always dense
        monkeypatch.setattr(C, "DENSE_FRACTION", frac)
        codes = C.Codes(ae.encode, x, chunk=128)
        assert codes.dense == (frac < 0)
        on, active = S.count_on(codes, labels, fmax)
        rec = S.reconstruction(codes, labels, fmax, S.high_precision(on, active, 0.4, 3))
        results.append((on, active, rec))
    for a, b in zip(*results, strict=True):
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True):
            assert torch.equal(u, v)
    assert results[0][2].counts[..., 0].sum() > 0  # some true positives: the comparison is not vacuous
    assert results[0][2].last[:, 0].sum() > 0


def test_planted_feature_gives_perfect_coverage_and_reconstruction():
    # Latent j fires exactly when BSP j holds: coverage 1 and reconstruction 1.
    g = torch.Generator().manual_seed(1)
    labels = torch.rand(400, 6, generator=g) < 0.4
    x = labels.float() * (1 + torch.rand(400, 6, generator=g))

    def encode(v):
        return torch.relu(v)

    fmax = C.Codes(encode, x).fmax()
    codes = C.Codes(encode, x)
    scores = S.score_families(codes, {"fam": labels}, codes, {"fam": labels}, fmax)
    assert scores["fam"].coverage == 1.0 and scores["fam"].reconstruction == 1.0
    # Shuffled labels: far from perfect.
    perm = labels[torch.randperm(400, generator=g)]
    worse = S.score_families(codes, {"fam": perm}, codes, {"fam": perm}, fmax)
    assert worse["fam"].coverage < 0.8 and worse["fam"].reconstruction < 0.8


def test_coverage_f1_definition_small_case():
    on = torch.tensor([[[2.0, 0.0]], [[1.0, 0.0]]])  # (K=2, F=1, B=2)
    active = torch.tensor([[4.0], [1.0]])
    total = torch.tensor([2.0, 3.0])
    cov, best = S.coverage(on, active, total)
    # t0: F1(b0) = 4/(4+2+0) = 2/3, F1(b1) = 0 -> 1/3; t1: F1(b0) = 2/(2+0+1) = 2/3 -> 1/3.
    assert abs(cov - 1 / 3) < 1e-6 and best == 0


def test_high_precision_rule():
    on = torch.tensor([[[19.0, 9.0, 10.0]]])
    active = torch.tensor([[20.0]])
    hpc = S.high_precision(on, active)
    assert hpc.tolist() == [[[True, False, False]]]  # 0.95 precision and >= 10 hits


def test_unsupervised_stats():
    ae = AutoEncoder(4, 8)
    x = torch.randn(300, 4)
    s = recon_stats(ae, x, chunk=64)
    x_hat, f = ae(x)
    fve = 1 - (x - x_hat).var(0, unbiased=False).sum() / x.var(0, unbiased=False).sum()
    assert abs(s.var_explained - fve.item()) < 1e-4
    assert abs(s.l0 - (f > 0).float().sum(-1).mean().item()) < 1e-4
    assert 0 <= s.frac_alive <= 1


def test_split_is_deterministic_and_balanced():
    ids = np.arange(10_000)
    a, b = is_test_game(ids), is_test_game(ids.copy())
    assert (a == b).all() and 0.45 < a.mean() < 0.55


def test_evalset_and_evaluate_sae_on_real_games():
    es = EvalSet(GAMES["othello"].families(), 20, 20)
    gid = 0
    while not es.full:
        rec = play_random(16, seed=gid)
        lab = {k: torch.from_numpy(v) for k, v in label_games(rec, 59).items()}
        acts = torch.randn(16, 59, 8)
        lengths = torch.from_numpy(rec.lengths).clamp(max=59)
        es.add(acts, torch.from_numpy(tokens_of(rec)[:, :59]), torch.arange(gid, gid + 16), lengths, torch.arange(59).repeat(16, 1), lab)
        gid += 16
    assert es.progress() == {"train": 20, "test": 20}
    t = es.tensors()
    assert t["train"]["labels"]["mine_theirs_empty"].shape[1] == 128
    assert t["train"]["labels"]["legal_moves"].shape[1] == 64
    scores, stats = evaluate_sae(AutoEncoder(8, 32), es)
    assert set(scores) == {"mine_theirs_empty", "legal_moves"}
    for s in scores.values():
        assert 0 <= s.coverage <= 1 and 0 <= s.reconstruction <= 1


def test_codes_encoded_once_give_what_encoding_every_pass_gives(monkeypatch):
    """Stored sparse codes, a labelled subset of them (chess labels 20 of 256 positions) and the
    sparse decode of the unsupervised stats agree with the dense path, which re-encodes."""
    from boardlens.labels import Family
    from boardlens.metrics.evalset import evaluate_tensors

    g = torch.Generator().manual_seed(5)
    fam = Family("fam", (2, 3), 3, masked_classes=(0,))
    t = {}
    for s, n in (("train", 900), ("test", 700)):
        x_all = torch.randn(n, 8, generator=g)
        rows = torch.randperm(n, generator=g)[: n // 3].sort().values
        t[s] = {"x_all": x_all, "x": x_all[rows], "labelled_rows": rows,
                "labels": {"fam": fam.one_hot((x_all[rows, :6].reshape(-1, 2, 3) > 0).long() * 2 - 0)}}
    ae = AutoEncoder(8, 64)
    with torch.no_grad():
        ae.encoder.bias -= 1.0  # sparse codes: stored once
        ae.encoder.weight[:8] = torch.eye(8) * 3  # latents that track the labels' signs
    monkeypatch.setattr(C, "ENCODE_ROWS", 128)  # one stored piece of several encoded blocks
    results = []
    for frac in (C.DENSE_FRACTION, -1.0):
        monkeypatch.setattr(C, "DENSE_FRACTION", frac)
        results.append(evaluate_tensors(ae, t, {"fam": fam}))
    (s0, st0), (s1, st1) = results
    assert s0 == s1 and s0["fam"].reconstruction > 0
    assert all(abs(a - b) < 1e-5 for a, b in zip(st0, st1, strict=True)), (st0, st1)

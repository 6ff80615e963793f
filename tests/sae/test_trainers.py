"""Invariants of every SAE trainer, the p-anneal schedule, the shuffle buffer, IO, specs."""

import math

import pytest
import torch

from boardlens.sae.buffer import ShuffleBuffer
from boardlens.sae.io import load_sae, save_sae
from boardlens.sae.p_anneal import PAnnealTrainer
from boardlens.sae.sweep import TRAINERS, TrainerSpec, build_trainers

D, F = 16, 64


def data(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Sparse ground truth: each row mixes 3 of 32 directions.
    dirs = torch.randn(32, D, generator=g)
    codes = torch.zeros(n, 32)
    idx = torch.randint(0, 32, (n, 3), generator=g)
    codes.scatter_(1, idx, torch.rand(n, 3, generator=g) + 0.5)
    return codes @ dirs


def make(kind, **kw):
    extra = {"total_steps": 300, "anneal_start": 50} if kind == "p_anneal" else {}
    return TRAINERS[kind]("t", D, F, 0.01, warmup_steps=10, lr=1e-3, **extra, **kw)


@pytest.mark.parametrize("kind", sorted(TRAINERS))
def test_shapes_and_decode_encode_is_forward(kind):
    tr = make(kind)
    x = data(64)
    x_hat, f = tr.ae(x)
    assert x_hat.shape == (64, D) and f.shape == (64, F)
    assert torch.allclose(tr.ae.decode(tr.ae.encode(x)), x_hat)
    assert (f >= 0).all()


@pytest.mark.parametrize("kind", sorted(TRAINERS))
@pytest.mark.parametrize("recon", ["l2", "mse"])
def test_loss_decreases_and_decoder_stays_unit_norm(kind, recon):
    tr = make(kind, recon=recon)
    x = data()
    first = [tr.update(x[i * 256 : (i + 1) * 256]).loss for i in range(3)]
    for _epoch in range(8):
        for i in range(16):
            stats = tr.update(x[i * 256 : (i + 1) * 256])
    assert stats.loss < min(first) * 0.7
    norms = tr.ae.decoder.weight.norm(dim=0)
    assert torch.allclose(norms, torch.ones(F), atol=1e-5)
    assert 0 < stats.l0 <= F and stats.var_explained > 0.5
    assert 0 <= stats.dead_fraction <= 1


def test_warmup_starts_at_zero_lr():
    tr = make("standard")
    before = {k: v.clone() for k, v in tr.ae.state_dict().items()}
    tr.update(data(128))  # step 0: lr factor 0 -> weights unchanged
    for k, v in tr.ae.state_dict().items():
        assert torch.allclose(v, before[k]), k


def test_p_anneal_schedule_matches_reference():
    tr = PAnnealTrainer("p", D, F, 0.05, total_steps=200, anneal_start=20, warmup_steps=1)
    assert tr.update_steps == [20, 40, 60, 80, 100, 120, 140, 160, 180, 200]
    assert [round(p, 4) for p in tr.p_values] == [round(1 - 0.8 * i / 9, 4) for i in range(10)]
    x = data(8192)
    seen_p, alphas = [], []
    for step in range(200):
        f_batch = x[(step % 32) * 256 : (step % 32 + 1) * 256]
        queue_before = list(tr.queue)
        p_before, next_before, alpha_before = tr.p, tr.next_p, tr.alpha
        tr.update(f_batch)
        seen_p.append(tr.p)
        alphas.append(tr.alpha)
        if step in tr.update_steps and step > 20:
            # alpha was rescaled by mean(sum f^p_old) / mean(sum f^p_new) over the last 10 batches.
            q = (queue_before + [tr.queue[-1]])[-10:]
            ratio = sum(a for a, _ in q) / sum(b for _, b in q)
            assert math.isclose(tr.alpha, alpha_before * ratio, rel_tol=1e-6)
            assert tr.p == pytest.approx(next_before) and tr.p < p_before
    assert seen_p[19] == 1.0 and seen_p[20] == 1.0  # first update keeps p = p_start
    assert seen_p[40] == pytest.approx(tr.p_values[1])
    assert seen_p[-1] == pytest.approx(tr.p_values[8])  # p_end only at step == total_steps
    assert tr.alpha != 0.05


def test_shuffle_buffer_serves_each_row_once():
    buf = ShuffleBuffer(100, 2, min_unread=50, seed=0)
    rows = torch.arange(300, dtype=torch.float32)[:, None].repeat(1, 2)
    served, i = [], 0
    while i < 300:
        n = buf.push(rows[i:])
        i += n
        while buf.ready(10):
            served.append(buf.pop(10))
    while len(buf) >= 10:
        served.append(buf.pop(10))
    got = torch.cat(served)[:, 0]
    assert len(set(got.tolist())) == got.numel()  # never twice
    assert got.numel() == 300
    assert not torch.equal(got, torch.sort(got).values)  # shuffled
    with pytest.raises(ValueError):
        buf.push(torch.zeros(3, 5))


def test_spec_parsing_and_names():
    spec = TrainerSpec.parse("p_anneal:penalty=0.03,anneal_start=5,d_sae=32")
    assert spec.options == {"penalty": 0.03, "anneal_start": 5, "d_sae": 32}
    trs = build_trainers([spec, TrainerSpec.parse("standard")], D, 100, {"d_sae": 64, "penalty": 0.1})
    assert [t.name for t in trs] == ["p_anneal-32-0.03", "standard-64-0.1"]
    for bad in ("nope", "standard:penalty", "standard:foo=1", "standard:anneal_start=3"):
        with pytest.raises(ValueError):
            TrainerSpec.parse(bad)
    with pytest.raises(ValueError, match="unique"):
        build_trainers([TrainerSpec.parse("standard")] * 2, D, 10, {"d_sae": 8, "penalty": 0.1})


def test_save_and_load_round_trip(tmp_path):
    tr = make("standard")
    tr.update(data(64))
    path = save_sae(tmp_path, "s", tr.ae, {"step": 1})
    ae, meta = load_sae(path)
    assert meta["step"] == 1 and meta["arch"] == "relu"
    x = data(32)
    assert torch.allclose(ae(x)[0], tr.ae(x)[0])

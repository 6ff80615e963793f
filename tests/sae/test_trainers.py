"""Invariants of every SAE trainer, the p-anneal schedule, the shuffle buffer, IO, specs."""

import math

import pytest
import torch

from boardlens.registry import TRAINERS
from boardlens.sae.buffer import ShuffleBuffer
from boardlens.sae.io import load_sae, save_sae
from boardlens.sae.p_anneal import PAnnealTrainer
from boardlens.sae.sweep import TrainerSpec, build_trainers, expand_specs

TOPK_KINDS = ("topk", "batch_topk")
ANNEAL_KINDS = ("p_anneal", "gated_anneal")

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
    extra = {"anneal_start": 50} if kind in ANNEAL_KINDS else {}
    if kind in TOPK_KINDS:
        extra["k"] = 4
    if kind not in TOPK_KINDS:
        extra["penalty"] = 0.01
    return TRAINERS[kind]("t", D, d_sae=F, total_steps=300, warmup_steps=10, lr=1e-3, **extra, **kw)


@pytest.mark.parametrize("kind", TRAINERS.names())
def test_shapes_and_decode_encode_is_forward(kind):
    tr = make(kind)
    x = data(64)
    tr.update(x)  # TopK: b_dec from the first batch; every kind: one step off the init
    x_hat, f = tr.ae(x)
    assert x_hat.shape == (64, D) and f.shape == (64, F)
    assert torch.allclose(tr.ae.decode(tr.ae.encode(x)), x_hat)
    assert (f >= 0).all()
    if kind == "topk":
        assert ((f > 0).sum(-1) <= 4).all()


@pytest.mark.parametrize("kind", TRAINERS.names())
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
    if kind in TOPK_KINDS:
        assert stats.l0 <= 4 + 1e-6 and stats.sparsity == 0
    assert 0 <= stats.dead_fraction <= 1


def test_warmup_starts_at_zero_lr():
    tr = make("standard")
    before = {k: v.clone() for k, v in tr.ae.state_dict().items()}
    tr.update(data(128))  # step 0: lr factor 0 -> weights unchanged
    for k, v in tr.ae.state_dict().items():
        assert torch.allclose(v, before[k]), k


def test_p_anneal_schedule_matches_reference():
    tr = PAnnealTrainer("p", D, d_sae=F, penalty=0.05, total_steps=200, anneal_start=20, warmup_steps=1)
    sched = tr.sched
    assert sched.update_steps == [20, 40, 60, 80, 100, 120, 140, 160, 180, 200]
    assert [round(p, 4) for p in sched.p_values] == [round(1 - 0.8 * i / 9, 4) for i in range(10)]
    x = data(8192)
    seen_p = []
    for step in range(200):
        f_batch = x[(step % 32) * 256 : (step % 32 + 1) * 256]
        queue_before = list(sched.queue)
        p_before, next_before, alpha_before = sched.p, sched.next_p, sched.alpha
        tr.update(f_batch)
        seen_p.append(sched.p)
        if step in sched.update_steps and step > 20:
            # alpha was rescaled by mean(sum f^p_old) / mean(sum f^p_new) over the last 10 batches.
            q = (queue_before + [sched.queue[-1]])[-10:]
            assert len(q) == 10
            ratio = sum(a for a, _ in q) / sum(b for _, b in q)
            assert math.isclose(sched.alpha, alpha_before * ratio, rel_tol=1e-6)
            assert sched.p == pytest.approx(next_before) and sched.p < p_before
    assert seen_p[19] == 1.0 and seen_p[20] == 1.0  # first update keeps p = p_start
    assert seen_p[40] == pytest.approx(sched.p_values[1])
    assert seen_p[-1] == pytest.approx(sched.p_values[8])  # p_end only at step == total_steps
    assert sched.alpha != 0.05
    with pytest.raises(ValueError, match="do not fit"):
        PAnnealTrainer("p", D, d_sae=F, penalty=0.05, total_steps=25, anneal_start=20)


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
    trs = build_trainers([spec, TrainerSpec.parse("standard"), TrainerSpec.parse("topk:k=8")], D, 100,
                         {"d_sae": 64, "penalty": 0.1})
    assert [t.name for t in trs] == ["p_anneal-32-0.03", "standard-64-0.1", "topk-64-k8"]
    assert trs[2].ae.extra_config() == {"k": 8}
    for bad in ("nope", "standard:penalty", "standard:foo=1", "standard:anneal_start=3", "topk:penalty=0.1",
                "gated:resample_every=10", "standard:penalty=x", "standard:penalty=1..2", "standard:normalize=2",
                "standard:penalty=0.1,penalty=0.2"):
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


def test_grid_specs_expand_to_stable_names():
    specs = expand_specs(["p_anneal:penalty=0.02..0.08/4,d_sae=64|128", "gated:lr=1e-3|2e-3"])
    assert len(specs) == 10
    assert [s.options["penalty"] for s in specs[:8:2]] == pytest.approx([0.02, 0.04, 0.06, 0.08])
    trs = build_trainers(specs, D, 100, {"d_sae": 32, "penalty": 0.05})
    names = [t.name for t in trs]
    assert names[:3] == ["p_anneal-64-0.02", "p_anneal-128-0.02", "p_anneal-64-0.04"]
    assert names[-2:] == ["gated-32-0.05-lr0.001", "gated-32-0.05-lr0.002"]
    # The same spec gives the same names and the same initial weights, whatever else is in the sweep.
    again = build_trainers(expand_specs(["gated:lr=1e-3|2e-3,seed=8"]), D, 100, {"d_sae": 32})
    alone = build_trainers(expand_specs(["gated:lr=1e-3,seed=8"]), D, 100, {"d_sae": 32})
    assert torch.equal(again[0].ae.encoder.weight, alone[0].ae.encoder.weight)
    with pytest.raises(ValueError, match="grid"):
        TrainerSpec.parse("standard:penalty=0.1|0.2")


@pytest.mark.parametrize("kind", TRAINERS.names())
def test_a_non_finite_batch_never_reaches_the_weights(kind):
    tr = make(kind)
    bad = data(64)
    bad[3, 2] = float("nan")
    assert tr.update(bad) is None and tr.step == 0  # not even the first-batch init
    for _ in range(12):  # past the warmup, so a step would move the weights
        assert tr.update(data(64)) is not None
    before = {k: v.clone() for k, v in tr.state_dict()["ae"].items()}
    for poison in (float("nan"), float("inf"), 1e30):  # 1e30: finite input, infinite loss
        x = data(64, seed=1)
        x[5] = poison
        assert tr.update(x) is None, poison
    after = tr.state_dict()
    assert all(torch.equal(before[k], v) for k, v in after["ae"].items())
    assert after["skipped_steps"] == 4 and after["step"] == 12
    assert tr.update(data(64, seed=2)) is not None  # and training goes on


def test_readme_trainer_table_is_the_generated_one():
    from pathlib import Path

    from boardlens.sae.sweep import options_table

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("<!-- trainer-options:", 1)[1].split("-->", 1)[1].split("<!-- /trainer-options -->")[0]
    assert block.strip() == options_table().strip(), "README trainer table is stale: paste `boardlens sae options`"


def test_shards_build_exactly_the_whole_sweeps_saes():
    specs = expand_specs(["standard:penalty=0.01..0.04/4", "topk:k=4|8|16"])  # 7 SAEs
    whole = {t.name: t for t in build_trainers(specs, D, 100, {"d_sae": 16})}
    parts = [build_trainers(specs, D, 100, {"d_sae": 16}, shard=(i, 3)) for i in range(3)]
    names = [[t.name for t in p] for p in parts]
    assert [len(n) for n in names] == [3, 2, 2] and sorted(sum(names, [])) == sorted(whole)
    for t in sum(parts, []):  # same name, same seed: the same initial weights as in the whole sweep
        for (k, a), b in zip(t.ae.state_dict().items(), whole[t.name].ae.state_dict().values(), strict=True):
            assert torch.equal(a, b), (t.name, k)

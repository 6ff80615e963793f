"""Exact resume of every trainer: a trainer rebuilt from its saved state continues bit-identically."""

import io

import pytest
import torch

from boardlens.registry import TRAINERS

D, F, N, STEPS, CUT = 16, 64, 128, 30, 13

# Options that make each trainer's schedule state matter within 30 steps.
OPTIONS = {
    "standard": dict(penalty=0.05, resample_every=6),  # resampling draws from the trainer's RNG
    "p_anneal": dict(penalty=0.05, anneal_start=4, n_updates=6, queue_len=3),
    "gated": dict(penalty=0.05, normalize=True, decay_start=20),
    "gated_anneal": dict(penalty=0.05, anneal_start=4, n_updates=6, queue_len=3, sparsity_warmup_steps=8),
    "topk": dict(k=4, threshold_start_step=3, auxk_dead_tokens=2 * N),
    "batch_topk": dict(k=4, threshold_start_step=3, auxk_dead_tokens=2 * N, normalize=True),
}


def _batches():
    g = torch.Generator().manual_seed(1)
    dirs = torch.randn(24, D, generator=g)
    codes = torch.rand(STEPS * N, 24, generator=g).pow(6)  # mostly small: some latents die
    return list((codes @ dirs + 0.5).split(N))


def _make(kind):
    tr = TRAINERS[kind]("t", D, d_sae=F, total_steps=STEPS, lr=3e-3, warmup_steps=3, seed=5, **OPTIONS[kind])
    if kind == "standard":
        with torch.no_grad():
            tr.ae.encoder.bias[:32] = -1e3  # dead from the start: step 6 resamples them
    return tr


def _via_disk(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # what a checkpoint file gives back


@pytest.mark.parametrize("kind", TRAINERS.names())
def test_resumed_training_is_bit_identical(kind):
    batches = _batches()
    straight = _make(kind)
    stats_straight = [straight.update(x) for x in batches]

    first = _make(kind)
    for x in batches[:CUT]:
        first.update(x)
    resumed = _make(kind)
    resumed.load_state_dict(_via_disk(first.state_dict()))
    stats_resumed = [resumed.update(x) for x in batches[CUT:]]

    assert stats_resumed == stats_straight[CUT:]
    for name, t in straight.ae.state_dict().items():
        assert torch.equal(t, resumed.ae.state_dict()[name]), name
    for p_a, p_b in zip(straight.ae.parameters(), resumed.ae.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(straight.opt.state[p_a][key], resumed.opt.state[p_b][key]), key
    assert straight.schedule_state() == resumed.schedule_state()
    assert torch.equal(straight.tokens_since_fired, resumed.tokens_since_fired)
    assert torch.equal(straight.gen.get_state(), resumed.gen.get_state())
    assert (straight.resampled, straight.norm_scale) == (resumed.resampled, resumed.norm_scale)


def test_the_options_really_exercise_the_state():
    """Guards the test above: resampling fired, schedules moved, AuxK and the threshold ran."""
    batches = _batches()
    trs = {kind: _make(kind) for kind in TRAINERS.names()}
    aux = {kind: sum(tr.update(x).aux for x in batches) for kind, tr in trs.items()}
    assert trs["standard"].resampled >= 32
    assert trs["p_anneal"].sched.k >= 3 and trs["gated_anneal"].sched.alpha != 0.05
    assert trs["gated"].norm_scale != 1.0
    assert aux["topk"] > 0 and aux["batch_topk"] > 0
    assert float(trs["topk"].ae.threshold) > 0


def test_resampling_revives_dead_latents():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, D, generator=g)
    tr = TRAINERS["standard"]("s", D, d_sae=F, penalty=0.0, total_steps=100, lr=1e-3, warmup_steps=1, resample_every=4)
    with torch.no_grad():
        tr.ae.encoder.bias[:10] = -100.0  # ten latents that can never fire
    enc_before = tr.ae.encoder.weight[:10].clone()
    for i in range(4):
        tr.update(x[i * 256 : (i + 1) * 256])
    assert not torch.equal(tr.ae.encoder.weight[:10], enc_before)  # re-initialised from inputs
    assert (tr.ae.encoder.bias[:10] == 0).all()
    assert torch.allclose(tr.ae.decoder.weight.norm(dim=0), torch.ones(F), atol=1e-5)
    assert (tr.tokens_since_fired[:10] == 0).all()


def test_normalised_training_exports_an_sae_for_raw_activations():
    g = torch.Generator().manual_seed(0)
    x = 40.0 * torch.randn(1024, D, generator=g) + 7.0  # far from unit norm
    for kind in ("standard", "gated", "topk"):
        tr = _make(kind) if kind != "standard" else TRAINERS[kind]("s", D, d_sae=F, penalty=0.05, total_steps=30, normalize=True)
        tr.normalize = True
        for i in range(4):
            tr.update(x[i * 256 : (i + 1) * 256])
        assert tr.norm_scale == pytest.approx(x[:256].pow(2).sum(-1).mean().sqrt().item(), rel=1e-6)
        raw = tr.export_ae()
        xb = x[:64]
        # the exported SAE on raw x == the trained SAE on x / s, scaled back
        torch.testing.assert_close(raw(xb)[0], tr.ae(xb / tr.norm_scale)[0] * tr.norm_scale, rtol=1e-4, atol=1e-3)
        assert raw is not tr.ae


def test_lr_schedule_warmup_and_decay():
    from boardlens.sae.optim import lr_factor

    assert [lr_factor(s, 4, 20) for s in (0, 2, 4, 10)] == [0.0, 0.5, 1.0, 1.0]
    assert [lr_factor(s, 4, 20, decay_start=10) for s in (9, 10, 15, 19)] == [1.0, 1.0, 0.5, 0.1]
    assert [lr_factor(s, 4, 20, resample_every=8) for s in (7, 8, 10)] == [1.0, 0.0, 0.5]


def test_a_checkpoint_of_0_1_0_resumes():
    """0.1.0 wrote penalty 0 and resample_every 0 into every kind's hyperparameters; a kind
    without those options still resumes from it, and any other difference is still refused."""
    tr = _make("topk")
    state = tr.state_dict()
    old = {**state, "hyperparams": {**state["hyperparams"], "penalty": 0.0, "resample_every": 0}}
    again = _make("topk")
    again.load_state_dict(old)
    assert again.step == tr.step
    with pytest.raises(ValueError, match="other settings"):
        _make("topk").load_state_dict({**state, "hyperparams": {**state["hyperparams"], "penalty": 0.1}})

"""Our trainers against dictionary_learning's (the real package), step for step.

Same initial weights, same 100 batches, squared-error reconstruction. Our steps are not
bit-identical to theirs by design (fused Adam, the b_dec gradient as a matvec, TopK decoding
only the k active columns sum in another order), so weights must agree to float rounding:
1e-4 relative for Standard, Gated, TopK and BatchTopK (measured ~1e-6). Once p < 1 the
annealed penalty's gradient p f^(p-1) blows up as f -> 0+, which magnifies rounding
differences (measured up to 6e-3 of a tensor's largest entry after 80 annealed steps), so
the annealing trainers get 2e-2 of each tensor's largest entry, and their schedule must match:
update steps and p exactly, alpha to 1e-4 after every step. AuxK is exercised by lowering the
dead threshold so latents die within the run.
"""

import pytest
import torch

from boardlens.sae.sweep import TRAINERS

D, F, STEPS, N = 32, 512, 100, 256


def _data():
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(64, D, generator=g)
    codes = torch.zeros(STEPS * N, 64)
    idx = torch.randint(0, 64, (STEPS * N, 4), generator=g)
    codes.scatter_(1, idx, torch.rand(STEPS * N, 4, generator=g) + 0.5)
    return codes @ dirs + 0.05 * torch.randn(STEPS * N, D, generator=g) + 1.0  # (STEPS*N, D), off-centre


ANNEAL = dict(anneal_start=20, p_start=1.0, p_end=0.2, n_sparsity_updates=10, sparsity_queue_length=10,
              sparsity_function="Lp^p")
# kind -> (dictionary_learning trainer module.class, its kwargs, our kwargs, annealed?)
CASES = {
    "standard": ("standard.StandardTrainer", dict(l1_penalty=0.05, sparsity_warmup_steps=None),
                 dict(penalty=0.05), False),
    "p_anneal": ("p_anneal.PAnnealTrainer", dict(initial_sparsity_penalty=0.05, sparsity_warmup_steps=None, **ANNEAL),
                 dict(penalty=0.05, anneal_start=20), True),
    "gated": ("gdm.GatedSAETrainer", dict(l1_penalty=0.05, sparsity_warmup_steps=None), dict(penalty=0.05), False),
    "gated_anneal": ("gated_anneal.GatedAnnealTrainer",
                     dict(initial_sparsity_penalty=0.05, sparsity_warmup_steps=None, **ANNEAL),
                     dict(penalty=0.05, anneal_start=20), True),
    "topk": ("top_k.TopKTrainer", dict(k=4, threshold_start_step=10), dict(k=4, threshold_start_step=10), False),
    "batch_topk": ("batch_top_k.BatchTopKTrainer", dict(k=4, threshold_start_step=10),
                   dict(k=4, threshold_start_step=10), False),
}


def _theirs(dictionary_learning, path, kw):
    import importlib

    module, cls = path.rsplit(".", 1)
    trainer_cls = getattr(importlib.import_module(f"dictionary_learning.trainers.{module}"), cls)
    return trainer_cls(steps=STEPS, activation_dim=D, dict_size=F, layer=0, lm_name="m", lr=1e-3,
                       warmup_steps=10, device="cpu", seed=0, **kw)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_steps_match_dictionary_learning(kind, dictionary_learning):
    path, their_kw, our_kw, annealed = CASES[kind]
    theirs = _theirs(dictionary_learning, path, their_kw)
    ours = TRAINERS[kind]("t", D, F, total_steps=STEPS, lr=1e-3, warmup_steps=10, recon="mse", **our_kw)
    if kind.endswith("topk"):  # let latents die within the run so AuxK is exercised
        theirs.dead_feature_threshold = 2 * N  # silent for two batches
        ours.auxk_dead_tokens = 2 * N
    ours.ae.load_state_dict(theirs.ae.state_dict())
    data = _data()
    aux_seen = 0.0
    for step in range(STEPS):
        x = data[step * N : (step + 1) * N]
        theirs.update(step, x.clone())
        aux_seen += ours.update(x.clone()).aux
        if annealed:
            assert ours.sched.p == theirs.p, step
            assert ours.sched.alpha == pytest.approx(theirs.sparsity_coeff, rel=1e-4), step
    if annealed:
        assert ours.sched.update_steps == theirs.sparsity_update_steps.tolist()
        assert ours.sched.p < 1 and ours.sched.alpha != 0.05  # the schedule really ran
    if kind.endswith("topk"):
        assert aux_seen > 0 and theirs.dead_features > 0  # AuxK really ran
        assert float(ours.ae.threshold) > 0
    want = theirs.ae.state_dict()
    for name, got in ours.ae.state_dict().items():
        if annealed:
            scale = want[name].abs().max().item()
            assert (got - want[name]).abs().max().item() <= 2e-2 * scale, name
        else:
            torch.testing.assert_close(got, want[name], rtol=1e-4, atol=1e-5, msg=name)

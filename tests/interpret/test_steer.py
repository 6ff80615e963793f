"""Activation scaling on a planted model: the scalar of the latent that carries the BSP moves,
the others stay; the cached SAE path equals the hooked forward."""

import torch

from boardlens.games.othello.edits import OthelloBoardEditor
from boardlens.interpret.interventions import ComponentSite, SAESite
from boardlens.interpret.steer import Pair, SteerConfig, steer
from boardlens.lm.model import GPT, GPTConfig
from boardlens.sae.archs.relu import AutoEncoder


def _planted():
    """Residual = e0 at every position (the embedding writes it; blocks write nothing); the
    head gives token 3 logit +x0 and token 9 logit -x0. SAE latent 0 reads and writes e0,
    latent 1 reads e1 (always 0): only latent 0 can flip 3 -> 9."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=61, block_size=59, n_layer=2, n_head=2, n_embd=16, norm="none")).eval()
    ae = AutoEncoder(16, 4).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.wte.weight[:, 0] = 1.0
        model.lm_head.weight[3, 0], model.lm_head.weight[9, 0] = 1.0, -1.0
        for p in ae.parameters():
            p.zero_()
        ae.encoder.weight[0, 0] = ae.encoder.weight[1, 1] = 1.0
        ae.decoder.weight[0, 0] = ae.decoder.weight[1, 1] = 1.0
    return model, ae


def _pairs(n=16):
    g = torch.Generator().manual_seed(1)
    return [Pair(torch.randint(1, 61, (int(k),), generator=g), [3], [9], []) for k in torch.randint(3, 20, (n,), generator=g)]


def test_the_latent_that_carries_the_move_is_the_one_scaled():
    model, ae = _planted()
    r = steer(model, SAESite(ae, 0), OthelloBoardEditor(), _pairs(), SteerConfig(steps=200, lr=0.1))
    assert r.flip_before == 0.0 and r.flip_after == 1.0 and r.train_flip_after == 1.0
    assert r.moved == [0] and r.alpha[0] < 0  # flipping the sign of e0 is what flips 3 -> 9
    assert abs(float(r.alpha[1]) - 1) < 0.1
    assert r.kl < 1e-6  # the other moves' logits never change


def test_cached_sae_path_equals_the_hooked_forward():
    torch.manual_seed(2)
    model = GPT(GPTConfig(vocab_size=61, block_size=59, n_layer=3, n_head=2, n_embd=32)).eval()
    ae = AutoEncoder(32, 64).eval()
    site = SAESite(ae, 1)
    toks = torch.randint(1, 61, (3, 11))
    alpha = torch.rand(64) * 2
    with site.scale(model, alpha):
        hooked = model(toks)[0]
    assert torch.allclose(site.scaled_logits(model, toks)(alpha), hooked, atol=1e-5)


def test_components_scale_attention_and_mlp_outputs():
    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=61, block_size=59, n_layer=2, n_head=2, n_embd=32)).eval()
    site = ComponentSite(model)
    toks = torch.randint(1, 61, (2, 9))
    assert site.labels == ["attn0", "mlp0", "attn1", "mlp1"]
    assert torch.allclose(site.scaled_logits(model, toks)(torch.ones(4)), model(toks)[0])
    # attn1 and mlp1 scaled to 0 leave the residual after block 0: the logits read it directly
    _, resid = model(toks, resid_layers=(0,))
    want = model.lm_head(model.transformer.ln_f(resid[0]))
    assert torch.allclose(site.scaled_logits(model, toks)(torch.tensor([1.0, 1.0, 0.0, 0.0])), want, atol=1e-5)


def test_chess_move_scores_are_the_sans_log_probabilities():
    """A chess move's score is the teacher-forced log-probability of its characters and the
    closing space, computed by hand here on a random model."""
    from boardlens.games.chess import tokenizer
    from boardlens.games.chess.edits import ChessBoardEditor

    torch.manual_seed(4)
    model = GPT(GPTConfig(vocab_size=32, block_size=256, n_layer=2, n_head=2, n_embd=32)).eval()
    prefix = torch.from_numpy(tokenizer.encode(";1.e4 e5 2."))
    pairs = [Pair(prefix, ["Nf3"], ["Qh5+"], ["d4", "Bc4"]), Pair(prefix[:-2], ["e5"], ["c5"], [])]
    mb = ChessBoardEditor().move_batch(pairs, 32)
    with torch.no_grad():
        scores = mb.scores(model(mb.tokens)[0])

    def by_hand(pre, san):
        seq = torch.cat([pre, torch.from_numpy(tokenizer.encode(san + " "))])
        with torch.no_grad():
            logp = torch.log_softmax(model(seq[None])[0][0], -1)
        return sum(float(logp[pre.numel() - 1 + c, seq[pre.numel() + c]]) for c in range(len(san) + 1))

    assert scores.shape == (2, 4)
    for i, (pre, cands) in enumerate([(prefix, ["Nf3", "Qh5+", "d4", "Bc4"]), (prefix[:-2], ["e5", "c5"])]):
        for k, san in enumerate(cands):
            assert abs(float(scores[i, k]) - by_hand(pre, san)) < 1e-4
    assert mb.plus[0].tolist() == [True, False, False, False] and mb.minus[1].tolist() == [False, True, False, False]
    assert mb.same[0].tolist() == [False, False, True, True] and not mb.same[1].any()

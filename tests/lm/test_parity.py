"""Our loaders against the real libraries: a checkpoint written by `transformers` or
`transformer_lens` gives the same logits in BoardLens as in its own library (max abs
difference <= 1e-4) over a grid of the config fields that change the math.

The libraries are the `interop` extra (`make test` installs it); without them these skip.
Every parameter, LayerNorm weights and biases included, is randomised so that each field's
effect shows in the logits.
"""

from __future__ import annotations

import json

import pytest
import torch

from boardlens.lm.formats import load_hf_gpt2, load_transformer_lens

TOL = 1e-4
V, T = 61, 32


def _randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)


def _max_diff(ours, reference_logits: torch.Tensor, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (ours(x)[0] - reference_logits).abs().max().item()


HF_GRID = {
    "defaults": {},
    "eps 1e-6, exact gelu": {"layer_norm_epsilon": 1e-6, "activation_function": "gelu"},
    "no attention scaling": {"scale_attn_weights": False},
    "scaled by inverse layer": {"scale_attn_by_inverse_layer_idx": True, "n_layer": 3},
    "relu, n_inner 24": {"activation_function": "relu", "n_inner": 24},
    "silu, eps 1e-3": {"activation_function": "silu", "layer_norm_epsilon": 1e-3},
    "gelu_pytorch_tanh, untied head": {"activation_function": "gelu_pytorch_tanh", "tie_word_embeddings": False},
}


@pytest.mark.parametrize("storage", ["safetensors", "sharded", "pytorch_model.bin"])
@pytest.mark.parametrize("name", HF_GRID)
def test_hf_gpt2_logits_match_transformers(tmp_path, name, storage):
    transformers = pytest.importorskip("transformers", reason="the interop extra (transformers) is not installed")
    fields = {"vocab_size": V, "n_positions": T, "n_layer": 2, "n_head": 2, "n_embd": 16, **HF_GRID[name]}
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**fields)).eval()
    _randomise(hf, 0)
    if storage == "pytorch_model.bin":  # what older exports hold: a plain state dict
        hf.config.save_pretrained(tmp_path)
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    else:
        hf.save_pretrained(tmp_path, **({"max_shard_size": "20KB"} if storage == "sharded" else {}))
        assert (tmp_path / "model.safetensors.index.json").exists() == (storage == "sharded")
    x = torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(x).logits
    assert _max_diff(load_hf_gpt2(tmp_path), ref, x) <= TOL


def test_hf_gpt2_refuses_what_it_cannot_compute(tmp_path):
    from boardlens.lm.checkpoint import CheckpointError

    transformers = pytest.importorskip("transformers", reason="the interop extra (transformers) is not installed")
    for fields, error in (({"activation_function": "quick_gelu"}, "unsupported activation_function"),
                          ({"add_cross_attention": True}, "add_cross_attention")):
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=T, n_layer=1, n_head=2, n_embd=16, **fields)
        transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / error[:8])
        with pytest.raises(CheckpointError, match=error):
            load_hf_gpt2(tmp_path / error[:8])


TL_NORMS = ["LN", "LNPre", "RMS", "RMSPre", None]
TL_ACTS = ["gelu", "gelu_new", "relu", "silu"]


@pytest.mark.parametrize("norm", TL_NORMS, ids=str)
@pytest.mark.parametrize("act", TL_ACTS)
def test_transformer_lens_logits_match_transformer_lens(tmp_path, norm, act):
    tl = pytest.importorskip("transformer_lens", reason="the interop extra (transformer_lens) is not installed")
    # attention scaling varies with the activation, so every setting meets every norm
    scale = {"gelu": {}, "gelu_new": {"attn_scale": 3.0}, "relu": {"use_attn_scale": False},
             "silu": {"eps": 1e-3}}[act]
    cfg = tl.HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=T, d_head=8, n_heads=2, d_mlp=40, d_vocab=V,
                                     act_fn=act, normalization_type=norm, **{"eps": 1e-6, **scale})
    model = tl.HookedTransformer(cfg).eval()
    _randomise(model, 2)
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps(cfg.to_dict(), default=str))
    x = torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)
    assert _max_diff(load_transformer_lens(path), ref, x) <= TOL


def test_transformer_lens_refuses_what_it_cannot_compute(tmp_path):
    from boardlens.lm.checkpoint import CheckpointError

    tl = pytest.importorskip("transformer_lens", reason="the interop extra (transformer_lens) is not installed")
    cfg = tl.HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=T, d_head=8, n_heads=2, d_mlp=40, d_vocab=V,
                                     act_fn="gelu", parallel_attn_mlp=True)
    path = tmp_path / "model.pth"
    torch.save(tl.HookedTransformer(cfg).state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps(cfg.to_dict(), default=str))
    with pytest.raises(CheckpointError, match="parallel_attn_mlp"):
        load_transformer_lens(path)

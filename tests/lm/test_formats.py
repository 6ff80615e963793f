"""Public checkpoint formats: written from our own random model, loaded back, same logits."""

import json

import pytest
import torch
from safetensors.torch import save_file

from boardlens.lm.checkpoint import CheckpointError
from boardlens.lm.formats import load_any, load_hf_gpt2, load_nanogpt, load_transformer_lens
from boardlens.lm.model import GPT, GPTConfig

X = torch.randint(0, 32, (2, 40), generator=torch.Generator().manual_seed(0))


def write_nanogpt(path) -> GPT:
    """A nanoGPT checkpoint as ChessGPT ships it: compile prefix, mask buffers, extra keys."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=32, block_size=64, n_layer=2, n_head=2, n_embd=16)
    ours = GPT(cfg).eval()
    state = {"_orig_mod." + k: v for k, v in ours.state_dict().items()}
    for i in range(cfg.n_layer):  # older nanoGPT saves its causal mask as a buffer
        state[f"_orig_mod.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    args = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 64, "bias": False,
            "vocab_size": 32, "dropout": 0.0}
    torch.save({"model_args": args, "model": state, "iter_num": 7, "config": {"lr": 1e-3}}, path)
    return ours


def write_hf(folder, activation="gelu_tanh", hf_act="gelu_new") -> GPT:
    """A HF GPT-2 folder: Conv1D (transposed) weights, non-zero biases, tied head not stored."""
    torch.manual_seed(1)
    cfg = GPTConfig(vocab_size=32, block_size=64, n_layer=2, n_head=2, n_embd=16, bias=True,
                    activation=activation)
    ours = GPT(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.1)
        ours.lm_head.weight.copy_(ours.transformer.wte.weight)
    hf = {}
    for k, v in ours.state_dict().items():
        if k == "lm_head.weight":
            continue
        conv1d = k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        hf[k.removeprefix("transformer.")] = (v.t() if conv1d else v).contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(hf, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "vocab_size": 32, "n_positions": 64, "n_layer": 2, "n_head": 2,
        "n_embd": 16, "n_inner": None, "activation_function": hf_act}))
    return ours


def write_tl(path, with_ln: bool) -> GPT:
    """TransformerLens's layout (per-head W_Q/K/V/O, W_in/W_out, W_U/b_U), from our model."""
    torch.manual_seed(2)
    H, d, dh, L = 2, 16, 8, 2
    cfg = GPTConfig(vocab_size=61, block_size=59, n_layer=L, n_head=H, n_embd=d, bias=True,
                    head_bias=True)
    ours = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if p.dim() == 1:
                is_ln = ".ln_" in name or "ln_f" in name
                if is_ln and not with_ln:  # LNPre: identity LayerNorms
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                else:
                    p.normal_(1.0 if (is_ln and name.endswith("weight")) else 0.0, 0.1)
    s = ours.state_dict()
    sd = {"embed.W_E": s["transformer.wte.weight"], "pos_embed.W_pos": s["transformer.wpe.weight"],
          "unembed.W_U": s["lm_head.weight"].T.contiguous(), "unembed.b_U": s["lm_head.bias"]}
    if with_ln:
        sd["ln_final.w"], sd["ln_final.b"] = s["transformer.ln_f.weight"], s["transformer.ln_f.bias"]
    for i in range(L):
        o = f"transformer.h.{i}"
        w, bias = s[f"{o}.attn.c_attn.weight"], s[f"{o}.attn.c_attn.bias"]
        for j, x in enumerate("QKV"):
            sd[f"blocks.{i}.attn.W_{x}"] = w[j * d:(j + 1) * d].reshape(H, dh, d).permute(0, 2, 1).contiguous()
            sd[f"blocks.{i}.attn.b_{x}"] = bias[j * d:(j + 1) * d].reshape(H, dh)
        sd[f"blocks.{i}.attn.W_O"] = s[f"{o}.attn.c_proj.weight"].T.reshape(H, dh, d).contiguous()
        sd[f"blocks.{i}.attn.b_O"] = s[f"{o}.attn.c_proj.bias"]
        sd[f"blocks.{i}.attn.IGNORE"] = torch.tensor(-1e5)
        sd[f"blocks.{i}.mlp.W_in"] = s[f"{o}.mlp.c_fc.weight"].T.contiguous()
        sd[f"blocks.{i}.mlp.b_in"] = s[f"{o}.mlp.c_fc.bias"]
        sd[f"blocks.{i}.mlp.W_out"] = s[f"{o}.mlp.c_proj.weight"].T.contiguous()
        sd[f"blocks.{i}.mlp.b_out"] = s[f"{o}.mlp.c_proj.bias"]
        if with_ln:
            for tl, ln in (("ln1", "ln_1"), ("ln2", "ln_2")):
                sd[f"blocks.{i}.{tl}.w"] = s[f"{o}.{ln}.weight"]
                sd[f"blocks.{i}.{tl}.b"] = s[f"{o}.{ln}.bias"]
    torch.save(sd, path)
    return ours


def same_logits(a: GPT, b: GPT, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.allclose(a(x)[0], b(x)[0], atol=1e-5)


def test_nanogpt_checkpoint_with_compile_prefix_and_mask_buffers(tmp_path):
    path = tmp_path / "ckpt.pt"
    ours = write_nanogpt(path)
    assert same_logits(load_nanogpt(path), ours, X)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="ckpt.pt"):
        load_nanogpt(path)


def test_nanogpt_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model_args": {}, "model": {}, "payload": object()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_nanogpt(path)


@pytest.mark.parametrize("activation,hf_act", [("gelu_tanh", "gelu_new"), ("gelu", "gelu")])
def test_hf_gpt2_folder_conv1d_biases_and_tied_head(tmp_path, activation, hf_act):
    ours = write_hf(tmp_path, activation, hf_act)
    assert same_logits(load_hf_gpt2(tmp_path), ours, X)


def test_hf_gpt2_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_hf_gpt2(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 32, "n_positions": 8, "n_layer": 1,
                                                       "n_head": 1, "n_embd": 4}))
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_hf_gpt2(tmp_path)


@pytest.mark.parametrize("with_ln", [True, False])
def test_transformer_lens_state_dict(tmp_path, with_ln):
    path = tmp_path / "synthetic_model.pth"
    ours = write_tl(path, with_ln)
    x = torch.randint(0, 61, (2, 59))
    if not with_ln:  # LNPre, RMSPre and no normalisation look alike: the config must say
        with pytest.raises(CheckpointError, match="no normalisation weights.*synthetic_model.json"):
            load_transformer_lens(path)
        path.with_suffix(".json").write_text(json.dumps({"n_layers": 2, "d_model": 16, "normalization_type": "LNPre"}))
    assert same_logits(load_transformer_lens(path), ours, x)
    sd = torch.load(path, weights_only=True)
    del sd["blocks.1.mlp.W_in"]
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="synthetic_model.pth.*W_in"):
        load_transformer_lens(path)


def test_load_any_dispatches_every_format(tmp_path):
    from boardlens.services.config import DEFAULT_MODEL

    _, meta = load_any(DEFAULT_MODEL)
    assert meta["format"] == "boardlens" and meta["game"] == "othello"
    write_hf(tmp_path / "hf")
    assert load_any(tmp_path / "hf")[1] == {"game": "chess", "sae_layer": 1, "format": "hf-gpt2"}
    write_nanogpt(tmp_path / "c.pt")
    assert load_any(tmp_path / "c.pt")[1]["format"] == "nanogpt"
    ours = write_tl(tmp_path / "o.pth", with_ln=True)
    model, meta = load_any(tmp_path / "o.pth")
    assert meta == {"game": "othello", "sae_layer": 1, "format": "transformer-lens"}
    assert same_logits(model, ours, torch.randint(0, 61, (1, 59)))
    with pytest.raises(CheckpointError, match="not found"):
        load_any(tmp_path / "nope.pt")

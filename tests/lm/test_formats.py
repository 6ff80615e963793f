"""Public checkpoint formats: written from our own random model, loaded back, same logits."""

import json

import pytest
import torch
from safetensors.torch import save_file

from boardlens.lm.checkpoint import CheckpointError
from boardlens.lm.formats import load_hf_gpt2, load_nanogpt
from boardlens.lm.model import GPT, GPTConfig

X = torch.randint(0, 32, (2, 40), generator=torch.Generator().manual_seed(0))


def test_nanogpt_checkpoint_with_compile_prefix_and_mask_buffers(tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=32, block_size=64, n_layer=2, n_head=2, n_embd=16)
    ours = GPT(cfg).eval()
    state = {"_orig_mod." + k: v for k, v in ours.state_dict().items()}
    for i in range(cfg.n_layer):  # older nanoGPT saves its causal mask as a buffer
        state[f"_orig_mod.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    args = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 64, "bias": False,
            "vocab_size": 32, "dropout": 0.0}
    path = tmp_path / "ckpt.pt"
    torch.save({"model_args": args, "model": state, "iter_num": 7, "config": {"lr": 1e-3}}, path)
    loaded = load_nanogpt(path)
    with torch.no_grad():
        assert torch.allclose(loaded(X)[0], ours(X)[0], atol=1e-6)
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
    torch.manual_seed(1)
    cfg = GPTConfig(vocab_size=32, block_size=64, n_layer=2, n_head=2, n_embd=16, bias=True,
                    activation=activation)
    ours = GPT(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.1)  # non-zero biases and LayerNorm shifts exercise the mapping
        ours.lm_head.weight.copy_(ours.transformer.wte.weight)  # tied, as in GPT-2
    hf = {}
    for k, v in ours.state_dict().items():
        if k == "lm_head.weight":
            continue  # tied: not stored
        conv1d = k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        hf[k.removeprefix("transformer.")] = (v.t() if conv1d else v).contiguous()
    save_file(hf, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "vocab_size": 32, "n_positions": 64, "n_layer": 2, "n_head": 2,
        "n_embd": 16, "n_inner": None, "activation_function": hf_act}))
    loaded = load_hf_gpt2(tmp_path)
    with torch.no_grad():
        assert torch.allclose(loaded(X)[0], ours(X)[0], atol=1e-5)


def test_hf_gpt2_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_hf_gpt2(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 32, "n_positions": 8, "n_layer": 1,
                                                       "n_head": 1, "n_embd": 4}))
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_hf_gpt2(tmp_path)

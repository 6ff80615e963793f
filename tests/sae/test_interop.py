"""SAE export/import: dictionary_learning and SAELens layouts, round trips and the real library."""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from boardlens.registry import ARCHS
from boardlens.sae.archs import build_ae
from boardlens.sae.interop import export_sae, import_sae

ARCH_LIST = sorted(ARCHS.names())


def _ae(arch: str = "relu"):
    torch.manual_seed(0)
    ae = build_ae(arch, 24, 96, **({"k": 6} if "topk" in arch else {}))
    with torch.no_grad():
        for p in ae.parameters():
            p.add_(0.1 * torch.randn_like(p))  # nonzero biases, so a swapped bias would show
        if arch == "batch_topk":
            ae.threshold.fill_(0.05)  # a tracked inference threshold
    return ae


@pytest.mark.parametrize("arch", ARCH_LIST)
@pytest.mark.parametrize("fmt", ["dictionary_learning", "saelens"])
def test_round_trip_is_exact(tmp_path, fmt, arch):
    ae = _ae(arch)
    export_sae(ae, fmt, tmp_path / fmt, {"kind": "p_anneal", "penalty": 0.05, "lr": 1e-3, "layer": 5,
                                        "model": "chess-gpt", "step": 100})
    back, cfg = import_sae(tmp_path / fmt)
    assert back.arch == arch
    for k, v in ae.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    x = torch.randn(16, 24)
    torch.testing.assert_close(back(x)[0], ae(x)[0], rtol=0, atol=0)
    assert cfg


@pytest.mark.parametrize("arch", ["gated", "topk", "batch_topk"])
def test_saelens_encodings_of_the_other_architectures(tmp_path, arch):
    ae = _ae(arch)
    export_sae(ae, "saelens", tmp_path)
    w = load_file(str(tmp_path / "sae_weights.safetensors"))
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    x = torch.randn(32, 24)
    xc = x - w["b_dec"]
    if arch == "gated":  # SAELens's gated encode
        assert cfg["architecture"] == "gated"
        gate = (xc @ w["W_enc"] + w["b_gate"]) > 0
        f = gate * torch.relu(xc @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"])
    elif arch == "topk":  # top k of the pre-activations, then ReLU
        assert cfg["architecture"] == "topk" and cfg["k"] == 6
        top = (xc @ w["W_enc"] + w["b_enc"]).topk(cfg["k"], dim=-1)
        f = torch.zeros(32, 96).scatter(-1, top.indices, torch.relu(top.values))
    else:  # JumpReLU
        assert cfg["architecture"] == "jumprelu"
        pre = xc @ w["W_enc"] + w["b_enc"]
        f = torch.relu(pre) * (pre > w["threshold"])
    torch.testing.assert_close(f, ae.encode(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f @ w["W_dec"] + w["b_dec"], ae(x)[0], rtol=1e-5, atol=1e-5)


def test_saelens_layout_follows_its_documented_formulas(tmp_path):
    ae = _ae()
    export_sae(ae, "saelens", tmp_path, {"layer": 5})
    w = load_file(str(tmp_path / "sae_weights.safetensors"))
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert w["W_enc"].shape == (24, 96) and w["W_dec"].shape == (96, 24)
    assert cfg["architecture"] == "standard" and cfg["apply_b_dec_to_input"] and cfg["d_sae"] == 96
    assert cfg["hook_name"] == "blocks.5.hook_resid_post"
    x = torch.randn(16, 24)
    f = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])  # SAELens's standard encode
    torch.testing.assert_close(f, ae.encode(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f @ w["W_dec"] + w["b_dec"], ae(x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["gated", "topk", "batch_topk"])
def test_the_real_dictionary_learning_loads_every_architecture(tmp_path, dictionary_learning, arch):
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    cls = {"gated": dictionary_learning.GatedAutoEncoder, "topk": AutoEncoderTopK, "batch_topk": BatchTopKSAE}[arch]
    ae = _ae(arch)
    export_sae(ae, "dictionary_learning", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["trainer"]["dict_class"] == cls.__name__
    theirs = cls.from_pretrained(str(tmp_path / "ae.pt"))
    x = torch.randn(16, 24)
    torch.testing.assert_close(theirs(x), ae(x)[0])
    torch.testing.assert_close(theirs.encode(x), ae.encode(x))


def test_the_real_dictionary_learning_loads_our_export_and_we_load_its_save(tmp_path, dictionary_learning):
    dl = dictionary_learning
    ae = _ae()
    export_sae(ae, "dictionary_learning", tmp_path / "ours")
    theirs = dl.AutoEncoder.from_pretrained(str(tmp_path / "ours" / "ae.pt"), normalize_decoder=False)
    x = torch.randn(16, 24)
    torch.testing.assert_close(theirs(x), ae(x)[0])
    torch.testing.assert_close(theirs.encode(x), ae.encode(x))
    # Their model, saved the way their trainer saves it, loads into ours.
    other = dl.AutoEncoder(24, 96)
    (tmp_path / "theirs").mkdir()
    torch.save(other.state_dict(), tmp_path / "theirs" / "ae.pt")
    back, _ = import_sae(tmp_path / "theirs")
    torch.testing.assert_close(back(x)[0], other(x))


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="neither a dictionary_learning"):
        import_sae(tmp_path)
    export_sae(_ae(), "dictionary_learning", tmp_path / "dl")
    (tmp_path / "dl" / "ae.pt").write_bytes((tmp_path / "dl" / "ae.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match="ae.pt: not a readable"):
        import_sae(tmp_path / "dl")
    export_sae(_ae(), "saelens", tmp_path / "sl")
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    (tmp_path / "sl" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(ValueError, match="b_gate"):  # a gated cfg over standard weights
        import_sae(tmp_path / "sl")
    (tmp_path / "sl" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "transcoder"}))
    with pytest.raises(ValueError, match="SAELens architecture .transcoder. is not supported"):
        import_sae(tmp_path / "sl")
    with pytest.raises(ValueError, match="format must be"):
        export_sae(_ae(), "onnx", tmp_path / "x")


def test_cli_exports_a_trainer_checkpoint(tmp_path):
    import subprocess

    from boardlens.sae.io import save_sae

    ae = _ae()
    ckpt = save_sae(tmp_path / "checkpoints", "standard-96-0.05", ae, {"kind": "standard", "step": 7})
    r = subprocess.run([sys.executable, "-m", "boardlens.services.cli", "sae", "export", str(ckpt), "--format", "saelens",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    back, cfg = import_sae(tmp_path / "out")
    assert torch.equal(back.encoder.weight, ae.encoder.weight) and cfg["metadata"]["trainer"]["step"] == 7


SAELENS_ARCHS = [a for a in ARCH_LIST if getattr(ARCHS[a], "saelens_arch", "")]


@pytest.mark.parametrize("arch", SAELENS_ARCHS)
def test_the_real_saelens_loads_our_export_and_its_resave_comes_back(tmp_path, arch):
    """SAE.load_from_disk of our export encodes and decodes as we do, runs on the right model
    (no BOS, our context, a name that is not TransformerLens's), and what SAELens re-saves
    imports back exactly (a BatchTopK's k, which SAELens drops, is asked for, not guessed)."""
    sae_lens = pytest.importorskip("sae_lens", reason="the interop extra (sae-lens) is not installed")
    ae = _ae(arch)
    export_sae(ae, "saelens", tmp_path / "ours", {"kind": "standard", "layer": 5, "model": "othello-gpt", "game": "othello"})
    sae = sae_lens.SAE.load_from_disk(str(tmp_path / "ours"), device="cpu")
    x = 2 * torch.randn(64, 24)
    with torch.no_grad():
        f = ae.encode(x)
        assert (sae.encode(x) - f).abs().max().item() <= 1e-5
        assert (sae.decode(f) - ae.decode(f)).abs().max().item() <= 1e-5
    meta = sae.cfg.metadata
    assert meta.prepend_bos is False and meta.context_size == 59 and meta.hook_name == "blocks.5.hook_resid_post"
    assert meta.model_name == "boardlens/othello-gpt"  # TransformerLens's "othello-gpt" is another model
    sae.save_model(str(tmp_path / "resaved"))
    resaved = json.loads((tmp_path / "resaved" / "cfg.json").read_text())["metadata"]
    assert (resaved["prepend_bos"], resaved["context_size"], resaved["model_name"]) == (False, 59, "boardlens/othello-gpt")
    if arch == "batch_topk":
        with pytest.raises(ValueError, match="k is not recorded"):
            import_sae(tmp_path / "resaved")
        cfg_path = tmp_path / "resaved" / "cfg.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["metadata"]["batch_topk_k"] = 6
        cfg_path.write_text(json.dumps(cfg))
    back, _ = import_sae(tmp_path / "resaved")
    assert back.arch == arch
    with torch.no_grad():
        assert (back.encode(x) - f).abs().max().item() <= 1e-5
        assert (back.decode(f) - ae.decode(f)).abs().max().item() <= 1e-5

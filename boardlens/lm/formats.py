"""Loading public checkpoints into our GPT, never with unrestricted pickle.

- nanoGPT (ChessGPT's `lichess_8layers_ckpt_no_optimizer.pt`): a torch file holding
  `model_args` and `model` (a state dict named like ours, maybe with torch.compile's
  `_orig_mod.` prefix, maybe with the causal-mask buffers `attn.bias`). Read with
  `torch.load(weights_only=True)`, which refuses arbitrary objects.
- TransformerLens state dicts (OthelloGPT's `synthetic_model.pth`): per-head W_Q/W_K/W_V
  (heads, d_model, d_head), W_O (heads, d_head, d_model), MLP W_in/W_out, unembed W_U/b_U.
  The config comes from a HookedTransformerConfig JSON beside the weights (`<name>.json`, or
  a `config.json` with `n_layers`), else it is read off the state dict with OthelloGPT's
  settings (LayerNorm, exact GELU, eps 1e-5, attention scaled by sqrt(d_head)); a state dict
  without normalisation weights then needs the JSON (LNPre, RMSPre and none look alike).
- Hugging Face GPT-2 folders (`config.json` + `model.safetensors`, sharded safetensors with
  `model.safetensors.index.json`, or `pytorch_model.bin` read weights-only; e.g.
  8LayerChessGPT2 and the random-init controls): Conv1D layers store weights transposed
  (in, out); biases present; `lm_head.weight` may be absent (tied to `wte`). Every config
  field that changes the math is honoured (layer_norm_epsilon, scale_attn_weights,
  scale_attn_by_inverse_layer_idx, activation_function, n_inner) or refused (cross-attention,
  an activation we do not have).

Every problem raises CheckpointError naming the file and what is wrong.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from boardlens.files import load_torch, read_json
from boardlens.lm.checkpoint import CheckpointError, fill_model, read_safetensors
from boardlens.lm.model import GPT, GPTConfig

_MASK_BUFFER = re.compile(r"\.attn\.(bias|masked_bias)$")  # causal masks, not parameters
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _torch_load(path: Path, what: str):
    """torch.load restricted to tensors and plain containers (no arbitrary pickle)."""
    return load_torch(path, what, error=CheckpointError)


def load_nanogpt(path: str | Path) -> GPT:
    """A nanoGPT training checkpoint -> GPT (eval mode, float32)."""
    path = Path(path)
    ckpt = _torch_load(path, "nanoGPT checkpoint")
    if not isinstance(ckpt, dict) or "model_args" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path}: expected a dict with 'model_args' and 'model'")
    args = ckpt["model_args"]
    try:
        cfg = GPTConfig(vocab_size=int(args["vocab_size"]), block_size=int(args["block_size"]),
                        n_layer=int(args["n_layer"]), n_head=int(args["n_head"]),
                        n_embd=int(args["n_embd"]), bias=bool(args.get("bias", False)))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model_args ({e})") from e
    state = {}
    for k, v in ckpt["model"].items():
        k = k.removeprefix("_orig_mod.")
        if not _MASK_BUFFER.search(k):
            state[k] = v
    return fill_model(GPT(cfg), state, path)


HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                  "relu": "relu", "silu": "silu", "swish": "silu"}


def hf_gpt2_config(hf: dict, cfg_path: Path) -> GPTConfig:
    """A Hugging Face GPT-2 config.json -> GPTConfig, honouring or refusing what changes the math.

    Ignored because they do not change an eval-mode forward: dropouts, `reorder_and_upcast_attn`
    (float32 here anyway), `use_cache`, token ids, generation settings.
    """
    if hf.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{cfg_path}: model_type {hf.get('model_type')!r} is not gpt2")
    if hf.get("add_cross_attention"):
        raise CheckpointError(f"{cfg_path}: add_cross_attention (an encoder-decoder GPT-2) is not supported")
    act = hf.get("activation_function", "gelu_new")
    if act not in HF_ACTIVATIONS:
        raise CheckpointError(f"{cfg_path}: unsupported activation_function {act!r} (supported: {sorted(HF_ACTIVATIONS)})")
    try:
        return GPTConfig(vocab_size=int(hf["vocab_size"]), block_size=int(hf["n_positions"]),
                         n_layer=int(hf["n_layer"]), n_head=int(hf["n_head"]), n_embd=int(hf["n_embd"]),
                         d_mlp=int(hf.get("n_inner") or 0), bias=True, activation=HF_ACTIVATIONS[act],
                         ln_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                         attn_scale=0.0 if hf.get("scale_attn_weights", True) else 1.0,
                         attn_scale_by_layer=bool(hf.get("scale_attn_by_inverse_layer_idx", False)))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: not a GPT-2 config ({e})") from e


def hf_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """A Hugging Face folder's tensors: model.safetensors, its shards (index.json), or
    pytorch_model.bin and its shards (read weights-only). -> (tensors, the file named in errors)."""
    for index_name, read in (("model.safetensors.index.json", read_safetensors),
                             ("pytorch_model.bin.index.json", lambda p: _torch_load(p, "weights file"))):
        index = folder / index_name
        if not index.exists():
            continue
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a shard index ({e})") from e
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            path = (folder / shard).resolve()
            if path.parent != folder.resolve():
                raise CheckpointError(f"{index}: shard {shard!r} is outside the folder")
            out.update(read(path))
        return out, index
    if (folder / "model.safetensors").exists() or not (folder / "pytorch_model.bin").exists():
        return read_safetensors(folder / "model.safetensors"), folder / "model.safetensors"
    state = _torch_load(folder / "pytorch_model.bin", "weights file")
    if not isinstance(state, dict):
        raise CheckpointError(f"{folder / 'pytorch_model.bin'}: expected a state dict")
    return state, folder / "pytorch_model.bin"


def load_hf_gpt2(folder: str | Path) -> GPT:
    """A Hugging Face GPT-2 folder (config.json + weights, see hf_weights) -> GPT."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    try:
        hf = json.loads(cfg_path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{cfg_path}: not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
    cfg = hf_gpt2_config(hf, cfg_path)
    raw, weights = hf_weights(folder)
    state = {}
    for k, v in raw.items():
        if _MASK_BUFFER.search(k):
            continue
        k = k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k  # GPT2Model
        state[k] = v.t().contiguous() if k.endswith(_CONV1D) else v
    if "lm_head.weight" not in state and "transformer.wte.weight" in state:
        if hf.get("tie_word_embeddings", True) is False:
            raise CheckpointError(f"{weights}: no lm_head.weight, and tie_word_embeddings is false")
        state["lm_head.weight"] = state["transformer.wte.weight"]  # tied embeddings
    return fill_model(GPT(cfg), state, weights)


def _tl_tensor(sd: dict, key: str, path: Path) -> torch.Tensor:
    try:
        return sd[key]
    except KeyError as e:
        raise CheckpointError(f"{path}: TransformerLens state dict lacks {key!r}") from e


TL_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "relu": "relu", "silu": "silu"}
TL_NORMS = {"LN": "layernorm", "LNPre": "layernorm", "RMS": "rmsnorm", "RMSPre": "rmsnorm", None: "none"}
# HookedTransformerConfig fields that change the math and that this GPT does not have: refused
# unless at their no-op value.
TL_REFUSED = {"attn_only": False, "parallel_attn_mlp": False, "gated_mlp": False, "use_local_attn": False,
              "positional_embedding_type": "standard", "final_rms": False, "use_qk_norm": False,
              "output_logits_soft_cap": -1.0, "attn_scores_soft_cap": -1.0, "n_key_value_heads": None,
              "use_normalization_before_and_after": False, "num_experts": None, "relative_attention_max_distance": None}


def tl_config_file(path: Path) -> Path | None:
    """The HookedTransformerConfig JSON beside a TransformerLens state dict, if any."""
    for candidate in (path.with_suffix(".json"), path.parent / "config.json"):
        if candidate.exists():
            try:
                cfg = json.loads(candidate.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{candidate}: not valid JSON ({e})") from e
            if isinstance(cfg, dict) and "n_layers" in cfg and "d_model" in cfg:
                return candidate
    return None


def _tl_settings(cfg_file: Path | None, sd: dict, path: Path) -> dict:
    """GPTConfig fields beyond the shapes (norm, eps, activation, attention scale), from the
    config JSON or, without one, OthelloGPT's settings with the norm read off the state dict."""
    if cfg_file is None:
        has_w, has_b = "blocks.0.ln1.w" in sd, "blocks.0.ln1.b" in sd
        if not has_w:
            raise CheckpointError(f"{path}: no normalisation weights (LNPre, RMSPre or none?) and no config: put the "
                                  f"model's HookedTransformerConfig as JSON beside it ({path.with_suffix('.json').name})")
        return {"norm": "layernorm" if has_b else "rmsnorm", "ln_eps": 1e-5, "activation": "gelu", "attn_scale": 0.0}
    tl = json.loads(cfg_file.read_text())
    for key, ok in TL_REFUSED.items():
        value = tl.get(key, ok)
        if value != ok and not (key.endswith("soft_cap") and isinstance(value, int | float) and value <= 0):
            raise CheckpointError(f"{cfg_file}: {key}={value!r} is not supported")
    if tl.get("d_vocab_out", -1) not in (-1, tl.get("d_vocab")):
        raise CheckpointError(f"{cfg_file}: d_vocab_out {tl['d_vocab_out']} differs from d_vocab")
    act, norm = tl.get("act_fn", "gelu"), tl.get("normalization_type", "LN")
    if act not in TL_ACTIVATIONS:
        raise CheckpointError(f"{cfg_file}: unsupported act_fn {act!r} (supported: {sorted(TL_ACTIVATIONS)})")
    if norm not in TL_NORMS:
        raise CheckpointError(f"{cfg_file}: unsupported normalization_type {norm!r} (supported: LN, LNPre, RMS, RMSPre, null)")
    scale = float(tl.get("attn_scale") or -1.0)  # TransformerLens: -1 = sqrt(d_head), ours 0
    return {"norm": TL_NORMS[norm], "ln_eps": float(tl.get("eps", 1e-5)), "activation": TL_ACTIVATIONS[act],
            "attn_scale": (scale if scale > 0 else 0.0) if tl.get("use_attn_scale", True) else 1.0,
            "attn_scale_by_layer": bool(tl.get("scale_attn_by_inverse_layer_idx", False))}


def load_transformer_lens(path: str | Path) -> GPT:
    """A TransformerLens HookedTransformer state dict (.pth) -> GPT (config: tl_config_file)."""
    path = Path(path)
    sd = _torch_load(path, "state dict")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(sd).__name__}")
    W_E = _tl_tensor(sd, "embed.W_E", path)  # (V, d)
    W_pos = _tl_tensor(sd, "pos_embed.W_pos", path)  # (T, d)
    n_layer = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    H, d, dh = _tl_tensor(sd, "blocks.0.attn.W_Q", path).shape
    d_mlp = _tl_tensor(sd, "blocks.0.mlp.W_in", path).shape[1]
    settings = _tl_settings(tl_config_file(path), sd, path)
    try:
        cfg = GPTConfig(vocab_size=W_E.shape[0], block_size=W_pos.shape[0], n_layer=n_layer, n_head=H, n_embd=d,
                        d_mlp=d_mlp, bias=True, head_bias="unembed.b_U" in sd, **settings)
    except ValueError as e:
        raise CheckpointError(f"{path}: inconsistent shapes or settings ({e})") from e
    if H * dh != d:
        raise CheckpointError(f"{path}: n_heads * d_head = {H * dh} != d_model {d}")
    ones, zeros = torch.ones(d), torch.zeros(d)

    def ln(prefix: str, ours: str) -> dict:  # folded (LNPre, RMSPre) checkpoints carry no weights: identity
        if cfg.norm == "none":
            return {}
        out = {f"{ours}.weight": sd.get(f"{prefix}.w", ones)}
        if cfg.norm == "layernorm":
            out[f"{ours}.bias"] = sd.get(f"{prefix}.b", zeros)
        return out

    state = {"transformer.wte.weight": W_E, "transformer.wpe.weight": W_pos,
             **ln("ln_final", "transformer.ln_f"),
             "lm_head.weight": _tl_tensor(sd, "unembed.W_U", path).T}
    if cfg.head_bias:
        state["lm_head.bias"] = sd["unembed.b_U"]
    for i in range(n_layer):
        b, o = f"blocks.{i}", f"transformer.h.{i}"
        t = lambda name, b=b: _tl_tensor(sd, f"{b}.{name}", path)  # noqa: E731
        # (H, d, dh) -> rows h * dh + j of the (H * dh, d) Linear weight.
        qkv = [t(f"attn.W_{x}").permute(0, 2, 1).reshape(H * dh, d) for x in "QKV"]
        state.update({
            **ln(f"{b}.ln1", f"{o}.ln_1"), **ln(f"{b}.ln2", f"{o}.ln_2"),
            f"{o}.attn.c_attn.weight": torch.cat(qkv),
            f"{o}.attn.c_attn.bias": torch.cat([t(f"attn.b_{x}").reshape(H * dh) for x in "QKV"]),
            f"{o}.attn.c_proj.weight": t("attn.W_O").reshape(H * dh, d).T,
            f"{o}.attn.c_proj.bias": t("attn.b_O"),
            f"{o}.mlp.c_fc.weight": t("mlp.W_in").T, f"{o}.mlp.c_fc.bias": t("mlp.b_in"),
            f"{o}.mlp.c_proj.weight": t("mlp.W_out").T, f"{o}.mlp.c_proj.bias": t("mlp.b_out"),
        })
    return fill_model(GPT(cfg), {k: v.contiguous() for k, v in state.items()}, path)


def game_of_vocab(vocab_size: int, path: str | Path):
    """The registered game whose LMs have this vocabulary (how a public checkpoint declares it)."""
    from boardlens.registry import GAMES

    found = [g for g in GAMES.values() if g.vocab_size == vocab_size]
    if len(found) != 1:
        known = ", ".join(f"{g.name} {g.vocab_size}" for g in GAMES.values())
        raise CheckpointError(f"{path}: a vocabulary of {vocab_size} tokens names "
                              f"{'no' if not found else 'more than one'} registered game ({known})")
    return found[0]


def load_any(path: str | Path, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> tuple[GPT, dict]:
    """Any supported checkpoint -> (model, meta with 'game', 'sae_layer', 'format').

    A folder with our config.json is a bundled model; a folder with a GPT-2 config.json is a
    Hugging Face export; a file holding `model_args` is nanoGPT, any other torch file a
    TransformerLens state dict. For public checkpoints the game comes from the vocabulary
    (`Game.vocab_size`: Othello 61, chess 32) and the default layer from the game.
    """
    from boardlens.lm.checkpoint import load_model

    path = Path(path)
    if path.is_dir():
        cfg_path = path / "config.json"
        cfg = read_json(cfg_path, "model config", error=CheckpointError) if cfg_path.exists() else {}
        kind = cfg.get("format")
        if kind == "boardlens-gpt":
            model, meta = load_model(path, device, dtype)
            return model, {**meta, "format": "boardlens"}
        model, fmt = load_hf_gpt2(path), "hf-gpt2"
    elif not path.exists():
        raise CheckpointError(f"{path}: not found")
    else:
        try:
            model, fmt = load_nanogpt(path), "nanogpt"
        except CheckpointError as e:
            if "model_args" not in str(e):
                raise
            model, fmt = load_transformer_lens(path), "transformer-lens"
    game = game_of_vocab(model.config.vocab_size, path)
    meta = {"game": game.name, "sae_layer": game.default_sae_layer(model.config.n_layer), "format": fmt}
    return model.to(device=device, dtype=dtype).eval(), meta


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def model_digest(path: str | Path) -> str:
    """First 12 hex digits of the SHA-256 of what defines a model: a checkpoint file, or a
    folder's config.json and weight files (not its card, probes or floor/). Names which weights
    a report or run was made with."""
    import hashlib

    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and (p.name == "config.json" or p.suffix in WEIGHT_SUFFIXES))
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]

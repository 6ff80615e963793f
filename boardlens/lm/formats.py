"""Loading public checkpoints into our GPT, never with unrestricted pickle.

- nanoGPT (ChessGPT's `lichess_8layers_ckpt_no_optimizer.pt`): a torch file holding
  `model_args` and `model` (a state dict named like ours, maybe with torch.compile's
  `_orig_mod.` prefix, maybe with the causal-mask buffers `attn.bias`). Read with
  `torch.load(weights_only=True)`, which refuses arbitrary objects.
- TransformerLens state dicts (OthelloGPT's `synthetic_model.pth`): per-head W_Q/W_K/W_V
  (heads, d_model, d_head), W_O (heads, d_head, d_model), MLP W_in/W_out, unembed W_U/b_U, and
  either LayerNorm weights (`ln1.w`, ...) or none (`LNPre`, weights folded: identity here).
- Hugging Face GPT-2 folders (`config.json` + `model.safetensors`; e.g. 8LayerChessGPT2 and the
  random-init controls): Conv1D layers store weights transposed (in, out); biases present;
  `lm_head.weight` may be absent (tied to `wte`); activation `gelu_new` = tanh GELU.

Every problem raises CheckpointError naming the file and what is wrong.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from boardlens.lm.checkpoint import CheckpointError, fill_model, read_safetensors
from boardlens.lm.model import GPT, GPTConfig

_MASK_BUFFER = re.compile(r"\.attn\.(bias|masked_bias)$")  # causal masks, not parameters
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _torch_load(path: Path, what: str):
    """torch.load restricted to tensors and plain containers (no arbitrary pickle)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: not found") from e
    except Exception as e:  # truncated zip, pickle refused by weights_only, ...
        raise CheckpointError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from e


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


def load_hf_gpt2(folder: str | Path) -> GPT:
    """A Hugging Face GPT-2 folder (config.json + model.safetensors) -> GPT."""
    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    try:
        hf = json.loads(cfg_path.read_text())
        act = hf.get("activation_function", "gelu_new")
        cfg = GPTConfig(vocab_size=int(hf["vocab_size"]), block_size=int(hf["n_positions"]),
                        n_layer=int(hf["n_layer"]), n_head=int(hf["n_head"]),
                        n_embd=int(hf["n_embd"]), d_mlp=int(hf.get("n_inner") or 0), bias=True,
                        activation="gelu" if act == "gelu" else "gelu_tanh")
    except FileNotFoundError as e:
        raise CheckpointError(f"{cfg_path}: not found") from e
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: not a GPT-2 config ({e})") from e
    if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(f"{cfg_path}: unsupported activation_function {act!r}")
    raw = read_safetensors(weights)
    state = {}
    for k, v in raw.items():
        if _MASK_BUFFER.search(k):
            continue
        k = k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k  # GPT2Model
        state[k] = v.t().contiguous() if k.endswith(_CONV1D) else v
    if "lm_head.weight" not in state and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]  # tied embeddings
    return fill_model(GPT(cfg), state, weights)


def _tl_tensor(sd: dict, key: str, path: Path) -> torch.Tensor:
    try:
        return sd[key]
    except KeyError as e:
        raise CheckpointError(f"{path}: TransformerLens state dict lacks {key!r}") from e


def load_transformer_lens(path: str | Path) -> GPT:
    """A TransformerLens HookedTransformer state dict (.pth) -> GPT; shapes give the config."""
    path = Path(path)
    sd = _torch_load(path, "state dict")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(sd).__name__}")
    W_E = _tl_tensor(sd, "embed.W_E", path)  # (V, d)
    W_pos = _tl_tensor(sd, "pos_embed.W_pos", path)  # (T, d)
    n_layer = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    H, d, dh = _tl_tensor(sd, "blocks.0.attn.W_Q", path).shape
    d_mlp = _tl_tensor(sd, "blocks.0.mlp.W_in", path).shape[1]
    try:
        cfg = GPTConfig(vocab_size=W_E.shape[0], block_size=W_pos.shape[0], n_layer=n_layer,
                        n_head=H, n_embd=d, d_mlp=d_mlp, bias=True, head_bias="unembed.b_U" in sd)
    except ValueError as e:
        raise CheckpointError(f"{path}: inconsistent shapes ({e})") from e
    if H * dh != d:
        raise CheckpointError(f"{path}: n_heads * d_head = {H * dh} != d_model {d}")
    ones, zeros = torch.ones(d), torch.zeros(d)

    def ln(prefix: str, ours: str) -> dict:  # LNPre checkpoints carry no LayerNorm weights
        return {f"{ours}.weight": sd.get(f"{prefix}.w", ones), f"{ours}.bias": sd.get(f"{prefix}.b", zeros)}

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
        try:
            cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{cfg_path}: a model config must be a JSON object, got {type(cfg).__name__}")
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

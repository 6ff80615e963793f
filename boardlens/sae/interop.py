"""Export and import SAEs in the dictionary_learning and SAELens layouts.

    dictionary_learning: <folder>/ae.pt (torch state dict: bias (d,), encoder.weight (dict, d),
                         encoder.bias (dict,), decoder.weight (d, dict)) + config.json
                         {"trainer": {...}, "buffer": {...}}; `AutoEncoder.from_pretrained`
                         loads it.
    SAELens:             <folder>/sae_weights.safetensors (W_enc (d, dict), b_enc (dict,),
                         W_dec (dict, d), b_dec (d,)) + cfg.json ("standard" architecture with
                         apply_b_dec_to_input, so f = relu((x - b_dec) W_enc + b_enc)).

Both describe the same ReLU SAE as ours (`boardlens/sae/model.py`), so a round trip is exact.
Imports never unpickle arbitrary objects (`weights_only=True`, safetensors).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from boardlens.sae.io import ae_from_tensors, sae_tensors
from boardlens.sae.model import AutoEncoder

FORMATS = ("dictionary_learning", "saelens")


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def export_dictionary_learning(ae: AutoEncoder, folder: str | Path, meta: dict | None = None) -> Path:
    """Write ae.pt + config.json; meta (our checkpoint JSON) fills the trainer section."""
    meta = meta or {}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "ae.pt.tmp"
    torch.save(sae_tensors(ae), tmp)
    os.replace(tmp, folder / "ae.pt")
    trainer = {
        "dict_class": "AutoEncoder", "activation_dim": ae.d_in, "dict_size": ae.d_sae,
        "trainer_class": {"standard": "StandardTrainer", "p_anneal": "PAnnealTrainer"}.get(
            meta.get("kind", ""), meta.get("kind", "")),
        "lr": meta.get("lr"), "l1_penalty": meta.get("penalty"), "warmup_steps": meta.get("warmup_steps"),
        "seed": meta.get("seed"), "layer": meta.get("layer"), "lm_name": meta.get("model"),
        "steps": meta.get("step"), "exported_by": "boardlens",
    }
    _write_json(folder / "config.json", {"trainer": trainer, "buffer": {"d_submodule": ae.d_in}})
    return folder


def import_dictionary_learning(folder: str | Path) -> tuple[AutoEncoder, dict]:
    folder = Path(folder)
    path = folder / "ae.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ValueError(f"{path}: not found") from e
    except Exception as e:  # truncated or not a torch file
        raise ValueError(f"{path}: unreadable ({e})") from e
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    try:
        return ae_from_tensors(dict(state)), cfg
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from e


def export_saelens(ae: AutoEncoder, folder: str | Path, meta: dict | None = None) -> Path:
    """Write sae_weights.safetensors + cfg.json (a 'standard' SAELens SAE)."""
    meta = meta or {}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t = sae_tensors(ae)
    weights = {"W_enc": t["encoder.weight"].T.contiguous(), "b_enc": t["encoder.bias"],
               "W_dec": t["decoder.weight"].T.contiguous(), "b_dec": t["bias"]}
    save_file(weights, str(folder / "sae_weights.safetensors.tmp"))
    os.replace(folder / "sae_weights.safetensors.tmp", folder / "sae_weights.safetensors")
    layer = meta.get("layer")
    hook = f"blocks.{layer}.hook_resid_post" if layer is not None else ""
    _write_json(folder / "cfg.json", {
        "architecture": "standard", "d_in": ae.d_in, "d_sae": ae.d_sae, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
        "hook_name": hook, "hook_layer": layer, "model_name": meta.get("model", ""),
        "context_size": meta.get("context_size"),
        "metadata": {"hook_name": hook, "model_name": meta.get("model", ""), "exported_by": "boardlens",
                     "trainer": {k: meta[k] for k in ("kind", "penalty", "lr", "step") if k in meta}},
    })
    return folder


def import_saelens(folder: str | Path) -> tuple[AutoEncoder, dict]:
    folder = Path(folder)
    path = folder / "sae_weights.safetensors"
    cfg_path = folder / "cfg.json"
    try:
        cfg = json.loads(cfg_path.read_text())
        w = load_file(str(path))
    except FileNotFoundError as e:
        raise ValueError(f"{e.filename}: not found") from e
    except Exception as e:
        raise ValueError(f"{folder}: unreadable SAELens SAE ({e})") from e
    arch = cfg.get("architecture", "standard")
    if arch != "standard" or not cfg.get("apply_b_dec_to_input", True):
        raise ValueError(f"{cfg_path}: only 'standard' SAEs with apply_b_dec_to_input are supported, "
                         f"got architecture {arch!r}")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(f"{cfg_path}: normalize_activations={cfg['normalize_activations']!r} is not supported")
    try:
        tensors = {"bias": w["b_dec"], "encoder.weight": w["W_enc"].T, "encoder.bias": w["b_enc"],
                   "decoder.weight": w["W_dec"].T}
        return ae_from_tensors(tensors), cfg
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def export_sae(ae: AutoEncoder, fmt: str, folder: str | Path, meta: dict | None = None) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return (export_dictionary_learning if fmt == "dictionary_learning" else export_saelens)(ae, folder, meta)


def import_sae(folder: str | Path) -> tuple[AutoEncoder, dict]:
    """Either layout, told apart by its files."""
    folder = Path(folder)
    if (folder / "ae.pt").exists():
        return import_dictionary_learning(folder)
    if (folder / "sae_weights.safetensors").exists():
        return import_saelens(folder)
    raise ValueError(f"{folder}: neither a dictionary_learning (ae.pt) nor a SAELens (sae_weights.safetensors) SAE")

"""Export and import SAEs in the dictionary_learning and SAELens layouts, every architecture.

    dictionary_learning: <folder>/ae.pt (a torch state dict with exactly our tensor names) +
                         config.json {"trainer": {"dict_class": ..., ...}, "buffer": {...}};
                         dict_class AutoEncoder | GatedAutoEncoder | AutoEncoderTopK |
                         BatchTopKSAE, whose `from_pretrained` loads the file.
    SAELens:             <folder>/sae_weights.safetensors + cfg.json, with apply_b_dec_to_input
                         (the input is x - b_dec) and W_enc (d, F), W_dec (F, d):
        relu       -> "standard"  W_enc b_enc W_dec b_dec          f = ReLU(pre)
        gated      -> "gated"     W_enc b_gate b_mag r_mag W_dec b_dec
                                   f = 1[pre + b_gate > 0] * ReLU(exp(r_mag) pre + b_mag)
        topk       -> "topk"      W_enc b_enc W_dec b_dec, cfg k    f = TopK_k(ReLU(pre))
        batch_topk -> "jumprelu"  W_enc b_enc W_dec b_dec threshold (F,) = max(theta, 0)
                                   f = ReLU(pre) * 1[pre > threshold]: the same function as our
                                   inference-time ReLU(pre) * 1[ReLU(pre) > theta]

Round trips are exact. Imports never unpickle arbitrary objects (`weights_only=True`,
safetensors); errors name the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from boardlens.atomic import write_atomic, write_json
from boardlens.sae.io import ae_from_tensors, guess_arch, sae_tensors

FORMATS = ("dictionary_learning", "saelens")
DL_CLASSES = {"relu": "AutoEncoder", "gated": "GatedAutoEncoder", "topk": "AutoEncoderTopK",
              "batch_topk": "BatchTopKSAE"}
DL_TRAINERS = {"standard": "StandardTrainer", "p_anneal": "PAnnealTrainer", "gated": "GatedSAETrainer",
               "gated_anneal": "GatedAnnealTrainer", "topk": "TopKTrainer", "batch_topk": "BatchTopKTrainer"}
SAELENS_ARCH = {"relu": "standard", "gated": "gated", "topk": "topk", "batch_topk": "jumprelu"}


def _hyper(meta: dict) -> dict:
    """Trainer hyperparameters from our checkpoint JSON (nested since issue 4, flat before)."""
    return {**meta, **meta.get("hyperparams", {})}


def export_dictionary_learning(ae: torch.nn.Module, folder: str | Path, meta: dict | None = None) -> Path:
    """Write ae.pt + config.json; meta (our checkpoint JSON) fills the trainer section."""
    h = _hyper(meta or {})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "ae.pt", lambda p: torch.save(sae_tensors(ae), p))
    trainer = {
        "dict_class": DL_CLASSES[ae.arch], "activation_dim": ae.d_in, "dict_size": ae.d_sae,
        "trainer_class": DL_TRAINERS.get(h.get("kind", ""), h.get("kind", "")),
        "lr": h.get("lr"), "l1_penalty": h.get("penalty"), "warmup_steps": h.get("warmup_steps"),
        "seed": h.get("seed"), "layer": h.get("layer"), "lm_name": h.get("model"),
        "steps": h.get("step"), **ae.extra_config(), "exported_by": "boardlens",
    }
    write_json(folder / "config.json", {"trainer": trainer, "buffer": {"d_submodule": ae.d_in}})
    return folder


def import_dictionary_learning(folder: str | Path) -> tuple[torch.nn.Module, dict]:
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
    dict_class = cfg.get("trainer", {}).get("dict_class")
    by_class = {v: k for k, v in DL_CLASSES.items()}
    if dict_class is not None and dict_class not in by_class:
        raise ValueError(f"{cfg_path}: dict_class {dict_class!r} is not supported; supported: {sorted(by_class)}")
    try:
        return ae_from_tensors(dict(state), by_class.get(dict_class) or guess_arch(state)), cfg
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from e


def export_saelens(ae: torch.nn.Module, folder: str | Path, meta: dict | None = None) -> Path:
    """Write sae_weights.safetensors + cfg.json (see the module docstring for the mapping)."""
    h = _hyper(meta or {})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t = sae_tensors(ae)
    w = {"W_enc": t["encoder.weight"].T.contiguous(), "W_dec": t["decoder.weight"].T.contiguous()}
    cfg_extra: dict = {}  # architecture fields of cfg.json
    meta_extra: dict = {"boardlens_arch": ae.arch}
    if ae.arch == "relu":
        w |= {"b_enc": t["encoder.bias"], "b_dec": t["bias"]}
    elif ae.arch == "gated":
        w |= {"b_gate": t["gate_bias"], "b_mag": t["mag_bias"], "r_mag": t["r_mag"], "b_dec": t["decoder_bias"]}
    elif ae.arch == "topk":
        w |= {"b_enc": t["encoder.bias"], "b_dec": t["b_dec"]}
        cfg_extra["k"] = int(t["k"])
    else:  # batch_topk: at inference a JumpReLU with one shared threshold
        w |= {"b_enc": t["encoder.bias"], "b_dec": t["b_dec"],
              "threshold": torch.full((ae.d_sae,), max(float(t["threshold"]), 0.0))}
        meta_extra["batch_topk_k"] = int(t["k"])
    write_atomic(folder / "sae_weights.safetensors", lambda p: save_file(w, str(p)))
    layer = h.get("layer")
    hook = f"blocks.{layer}.hook_resid_post" if layer is not None else ""
    write_json(folder / "cfg.json", {
        "architecture": SAELENS_ARCH[ae.arch], "d_in": ae.d_in, "d_sae": ae.d_sae, **cfg_extra, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
        "hook_name": hook, "hook_layer": layer, "model_name": h.get("model", ""),
        "context_size": h.get("context_size"),
        "metadata": {"hook_name": hook, "model_name": h.get("model", ""), "exported_by": "boardlens", **meta_extra,
                     "trainer": {k: h[k] for k in ("kind", "penalty", "lr", "step") if k in h}},
    })
    return folder


def import_saelens(folder: str | Path) -> tuple[torch.nn.Module, dict]:
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
    if arch not in SAELENS_ARCH.values() or not cfg.get("apply_b_dec_to_input", True):
        raise ValueError(f"{cfg_path}: supported are architectures {sorted(SAELENS_ARCH.values())} with "
                         f"apply_b_dec_to_input, got architecture {arch!r}")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(f"{cfg_path}: normalize_activations={cfg['normalize_activations']!r} is not supported")
    try:
        t = {"encoder.weight": w["W_enc"].T, "decoder.weight": w["W_dec"].T}
        if arch == "standard":
            return ae_from_tensors({**t, "encoder.bias": w["b_enc"], "bias": w["b_dec"]}, "relu"), cfg
        if arch == "gated":
            return ae_from_tensors({**t, "gate_bias": w["b_gate"], "mag_bias": w["b_mag"], "r_mag": w["r_mag"],
                                    "decoder_bias": w["b_dec"]}, "gated"), cfg
        t |= {"encoder.bias": w["b_enc"], "b_dec": w["b_dec"]}
        if arch == "topk":
            return ae_from_tensors({**t, "k": torch.tensor(int(cfg["k"]), dtype=torch.int32),
                                    "threshold": torch.tensor(-1.0)}, "topk"), cfg
        th = w["threshold"]
        if not bool((th == th[0]).all()):
            raise ValueError("per-latent JumpReLU thresholds differ; only one shared threshold (a BatchTopK "
                             "SAE) is supported")
        k = cfg.get("metadata", {}).get("batch_topk_k", 1)
        return ae_from_tensors({**t, "k": torch.tensor(int(k), dtype=torch.int32), "threshold": th[0].clone()},
                               "batch_topk"), cfg
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def export_sae(ae: torch.nn.Module, fmt: str, folder: str | Path, meta: dict | None = None) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return (export_dictionary_learning if fmt == "dictionary_learning" else export_saelens)(ae, folder, meta)


def import_sae(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    """Either layout, told apart by its files."""
    folder = Path(folder)
    if (folder / "ae.pt").exists():
        return import_dictionary_learning(folder)
    if (folder / "sae_weights.safetensors").exists():
        return import_saelens(folder)
    raise ValueError(f"{folder}: neither a dictionary_learning (ae.pt) nor a SAELens (sae_weights.safetensors) SAE")

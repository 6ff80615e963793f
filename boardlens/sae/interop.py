"""Export and import SAEs in the dictionary_learning and SAELens layouts, every architecture.

    dictionary_learning: <folder>/ae.pt (a torch state dict with exactly our tensor names) +
                         config.json {"trainer": {"dict_class": ..., ...}, "buffer": {...}};
                         dict_class is the architecture's `dl_class`, whose `from_pretrained`
                         loads the file.
    SAELens:             <folder>/sae_weights.safetensors + cfg.json, with apply_b_dec_to_input
                         (the input is x - b_dec) and W_enc (d, F), W_dec (F, d); the rest of
                         the mapping is each architecture's `to_saelens` / `from_saelens`
                         (boardlens/sae/archs/).

Round trips are exact. Imports never unpickle arbitrary objects (`weights_only=True`,
safetensors); errors name the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import save_file

from boardlens.atomic import write_atomic, write_json
from boardlens.files import (
    LAYER,
    WIDTH,
    BadFile,
    boolean,
    check,
    load_safetensors,
    load_torch,
    mapping,
    optional,
    read_json,
    text,
)
from boardlens.registry import ARCHS, GAMES, TRAINERS
from boardlens.sae.io import sae_tensors, tensors_to_ae

FORMATS = ("dictionary_learning", "saelens")


def _by(attr: str, value: str, what: str):
    """The registered architecture whose `attr` is `value` (a ValueError naming the supported ones)."""
    archs = [a for a in ARCHS.values() if getattr(a, attr)]
    for cls in archs:
        if getattr(cls, attr) == value:
            return cls
    raise ValueError(f"{what} {value!r} is not supported; supported: {sorted(getattr(a, attr) for a in archs)}")


def _dl_trainer(kind: str) -> str:
    """dictionary_learning's trainer class for our trainer kind (the kind itself if it has none)."""
    return getattr(TRAINERS[kind], "dl_trainer", "") or kind if kind in TRAINERS else kind


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
        "dict_class": ae.dl_class, "activation_dim": ae.d_in, "dict_size": ae.d_sae,
        "trainer_class": _dl_trainer(h.get("kind", "")),
        "lr": h.get("lr"), "l1_penalty": h.get("penalty"), "warmup_steps": h.get("warmup_steps"),
        "seed": h.get("seed"), "layer": h.get("layer"), "lm_name": h.get("model"),
        "steps": h.get("step"), **ae.extra_config(), "exported_by": "boardlens",
    }
    write_json(folder / "config.json", {"trainer": trainer, "buffer": {"d_submodule": ae.d_in}})
    return folder


DL_CONFIG = {"trainer": mapping({"dict_class": text(), "layer": optional(LAYER), "activation_dim": optional(WIDTH),
                                 "dict_size": optional(WIDTH)})}
"""dictionary_learning's config.json: the fields we read."""
SAELENS_CONFIG = {"architecture": text(), "d_in": WIDTH, "d_sae": WIDTH, "hook_layer": optional(LAYER),
                  "hook_name": optional(text()), "apply_b_dec_to_input": boolean,
                  "normalize_activations": optional(text()), "metadata": mapping()}
"""SAELens' cfg.json: the fields we read."""


def import_dictionary_learning(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    folder = Path(folder)
    path = folder / "ae.pt"
    state = load_torch(path, "dictionary_learning SAE state")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadFile(path, "not a state dict of tensors")
    cfg_path = folder / "config.json"
    cfg = (check(read_json(cfg_path, "dictionary_learning config"), DL_CONFIG, cfg_path, required=("trainer",))
           if cfg_path.exists() else {})
    dict_class = cfg.get("trainer", {}).get("dict_class")
    try:
        arch = _by("dl_class", dict_class, "dict_class").arch if dict_class is not None else None
    except ValueError as e:
        raise BadFile(cfg_path, str(e)) from None
    return tensors_to_ae(dict(state), arch, path), cfg


def export_saelens(ae: torch.nn.Module, folder: str | Path, meta: dict | None = None) -> Path:
    """Write sae_weights.safetensors + cfg.json (see the module docstring for the mapping)."""
    h = _hyper(meta or {})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t = sae_tensors(ae)
    extra, cfg_extra, meta_extra = ae.to_saelens(t)
    w = {"W_enc": t["encoder.weight"].T.contiguous(), "W_dec": t["decoder.weight"].T.contiguous(), **extra}
    meta_extra = {"boardlens_arch": ae.arch, **meta_extra}
    write_atomic(folder / "sae_weights.safetensors", lambda p: save_file(w, str(p)))
    layer = h.get("layer")
    hook = f"blocks.{layer}.hook_resid_post" if layer is not None else ""
    # What SAELens needs to run the SAE on the right model and inputs: our game LMs have no
    # BOS token (SAELens would prepend one), a fixed context, and names that are not
    # TransformerLens's (its "othello-gpt" is another model): "boardlens/<our model name>".
    model_name = f"boardlens/{h['model']}" if h.get("model") else ""
    context = h.get("context_size") or (GAMES[h["game"]].lm_data().context if h.get("game") in GAMES else None)
    where = {"hook_name": hook, "model_name": model_name, "context_size": context, "prepend_bos": False}
    write_json(folder / "cfg.json", {
        "architecture": ae.saelens_arch, "d_in": ae.d_in, "d_sae": ae.d_sae, **cfg_extra, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
        "hook_layer": layer, **where,  # top level too: SAELens before 6 reads them there
        "metadata": {**where, "exported_by": "boardlens", **meta_extra,
                     "trainer": {k: h[k] for k in ("kind", "penalty", "lr", "step") if k in h}},
    })
    return folder


def import_saelens(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    folder = Path(folder)
    path = folder / "sae_weights.safetensors"
    cfg_path = folder / "cfg.json"
    cfg = check(read_json(cfg_path, "SAELens config"), SAELENS_CONFIG, cfg_path, required=("d_in", "d_sae"))
    w = load_safetensors(path)
    try:
        cls = _by("saelens_arch", cfg.get("architecture", "standard"), "SAELens architecture")
    except ValueError as e:
        raise BadFile(cfg_path, str(e)) from None
    if not cfg.get("apply_b_dec_to_input", True):
        raise BadFile(cfg_path, "only SAEs with apply_b_dec_to_input are supported")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise BadFile(cfg_path, f"normalize_activations={cfg['normalize_activations']!r} is not supported")
    try:
        t = {"encoder.weight": w["W_enc"].T, "decoder.weight": w["W_dec"].T, **cls.from_saelens(w, cfg)}
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise BadFile(path, f"not a {cls.saelens_arch} SAELens SAE ({e})") from None
    ae = tensors_to_ae(t, cls.arch, path)
    if (ae.d_in, ae.d_sae) != (cfg["d_in"], cfg["d_sae"]):
        raise BadFile(cfg_path, f"says d_in {cfg['d_in']}, d_sae {cfg['d_sae']}; the weights are {ae.d_in} x {ae.d_sae}")
    return ae, cfg


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


class FoundSAE(NamedTuple):
    name: str  # file stem or folder name
    ae: torch.nn.Module
    layer: int | None  # the block its activations came from, when its files say
    game: str | None  # ours only: the game of the stream it was trained on
    step: int | None


def _layer_of(meta: dict) -> int | None:
    """Layer from any layout's metadata: ours (layer), dictionary_learning (trainer.layer),
    SAELens (hook_layer, or blocks.N. in hook_name); values of another type are ignored."""
    trainer = meta.get("trainer")
    for value in (meta.get("layer"), trainer.get("layer") if isinstance(trainer, dict) else None,
                  meta.get("hook_layer")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    hook = meta.get("hook_name")
    if isinstance(hook, str) and hook.startswith("blocks.") and hook.split(".")[1].isdigit():
        return int(hook.split(".")[1])
    return None


def find_saes(path: str | Path) -> list[FoundSAE]:
    """Every SAE at `path`: one of ours (`X.safetensors` beside `X.json`), a folder of them (a
    checkpoint step, a floor/), a run folder (its checkpoints/latest), a dictionary_learning
    folder (ae.pt) or a SAELens folder (sae_weights.safetensors). ValueError when none. A run
    folder's SAEs are those of its checkpoints/latest, or of every trainer shard's."""
    from boardlens.layout import run_parts
    from boardlens.sae.io import load_sae

    path = Path(path)
    latest = [p / "checkpoints" / "latest" for p in run_parts(path)] if path.is_dir() else []
    latest = [p.resolve() for p in latest if p.exists()]
    if len(latest) > 1:  # a sweep split over trainer shards: every shard's SAEs
        return [s for p in latest for s in find_saes(p)]
    if latest:
        path = latest[0]
    if path.is_dir() and ((path / "ae.pt").exists() or (path / "sae_weights.safetensors").exists()):
        ae, meta = import_sae(path)
        return [FoundSAE(path.name, ae, _layer_of(meta), None, None)]
    files = [path] if path.is_file() else sorted(p for p in path.glob("*.safetensors") if p.with_suffix(".json").exists())
    if not files:
        raise ValueError(f"{path}: no SAE here (ours: X.safetensors + X.json; a dictionary_learning or SAELens "
                         "folder; a run folder with checkpoints/latest)")
    out = []
    for f in files:
        ae, meta = load_sae(f)
        out.append(FoundSAE(meta.get("name", f.stem), ae, _layer_of(meta), meta.get("game") or None, meta.get("step")))
    return out

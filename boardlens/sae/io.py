"""SAE files: `<name>.safetensors` (dictionary_learning tensor names) + `<name>.json`.

The JSON holds the architecture, sizes, trainer hyperparameters and the step. Writes are
atomic (temp file + os.replace), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from boardlens.sae.model import AutoEncoder


def sae_tensors(ae: AutoEncoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in ae.state_dict().items()}


def ae_from_tensors(tensors: dict[str, torch.Tensor]) -> AutoEncoder:
    """Rebuild an AutoEncoder from its named tensors (shapes checked)."""
    try:
        d_sae, d_in = tensors["encoder.weight"].shape
    except (KeyError, ValueError) as e:
        raise ValueError(f"not an SAE state: needs 2-D 'encoder.weight' ({e})") from e
    ae = AutoEncoder(d_in, d_sae)
    want = {k: tuple(v.shape) for k, v in ae.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if want != got:
        raise ValueError(f"SAE tensors {got} do not match the architecture {want}")
    ae.load_state_dict({k: v.float() for k, v in tensors.items()})
    return ae


def save_sae(folder: str | Path, name: str, ae: AutoEncoder, meta: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    st, js = folder / f"{name}.safetensors", folder / f"{name}.json"
    save_file(sae_tensors(ae), str(st) + ".tmp")
    os.replace(str(st) + ".tmp", st)
    js.with_name(js.name + ".tmp").write_text(json.dumps({"arch": ae.arch, **meta}, indent=2))
    os.replace(js.with_name(js.name + ".tmp"), js)
    return st


def load_sae(path: str | Path) -> tuple[AutoEncoder, dict]:
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    return ae_from_tensors(load_file(str(path))), meta

"""SAE files: `<name>.safetensors` (dictionary_learning tensor names) + `<name>.json`.

The JSON holds the architecture, sizes, trainer hyperparameters and the step. Writes are
atomic (temp file + os.replace), so a reader never sees half a file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from boardlens.atomic import write_atomic, write_json
from boardlens.files import (
    LAYER,
    WIDTH,
    BadFile,
    check,
    integer,
    load_safetensors,
    mapping,
    number,
    read_json,
    text,
)
from boardlens.registry import ARCHS, GAMES, TRAINERS

META = {
    "arch": text(ARCHS.names), "name": text(), "step": integer(0, 2**62), "game": text(GAMES.names),
    "model": text(), "layer": LAYER, "norm_scale": number(0, 1e30, above=True), "tokens": integer(0, 2**62),
    "schedule": mapping(), "trainer": mapping(),
    "hyperparams": mapping({"kind": text(TRAINERS.names), "d_in": WIDTH, "d_sae": WIDTH}),
}
"""Our `<name>.json`: the fields a reader uses, checked before any is (others are left alone)."""


def sae_tensors(ae: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in ae.state_dict().items()}


def guess_arch(tensors: dict[str, torch.Tensor]) -> str:
    """The first registered architecture whose tensor names these are (TopK and BatchTopK share
    theirs: the file's metadata tells them apart)."""
    names = set(tensors)
    for cls in ARCHS.values():
        if cls.tensor_names == names:
            return cls.arch
    raise ValueError(f"tensors {sorted(names)} are no registered SAE architecture's "
                     f"({', '.join(ARCHS.names())})")


def ae_from_tensors(tensors: dict[str, torch.Tensor], arch: str | None = None) -> torch.nn.Module:
    """Rebuild an SAE from its named tensors (shapes checked); arch defaults to guess_arch."""
    cls = ARCHS[arch or guess_arch(tensors)]
    try:
        d_sae, d_in = tensors["encoder.weight"].shape
        extra = cls.options_from_tensors(tensors)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"not a {cls.arch} SAE state: needs a 2-D 'encoder.weight' and "
                         f"{sorted(cls.tensor_names)} ({e})") from e
    ae = cls(d_in, d_sae, **extra)
    want = {k: tuple(v.shape) for k, v in ae.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if want != got:
        raise ValueError(f"SAE tensors {got} do not match the {cls.arch} architecture {want}")
    ae.load_state_dict({k: v.to(ae.state_dict()[k].dtype) for k, v in tensors.items()})
    return ae


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """safetensors file, written atomically."""
    write_atomic(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def save_sae(folder: str | Path, name: str, ae: torch.nn.Module, meta: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    st = folder / f"{name}.safetensors"
    save_tensors(sae_tensors(ae), st)
    write_json(folder / f"{name}.json", {"arch": ae.arch, **meta})
    return st


def load_sae(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """An SAE file and its JSON; BadFile (naming the file) for anything unusable."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    meta = check(read_json(meta_path, "SAE's metadata"), META, meta_path)
    return tensors_to_ae(load_safetensors(path), meta.get("arch"), path), meta


def tensors_to_ae(tensors: dict, arch: str | None, path: str | Path) -> torch.nn.Module:
    """ae_from_tensors for the tensors of the file `path`: its errors name that file."""
    try:
        return ae_from_tensors(tensors, arch)
    except (ValueError, TypeError) as e:
        raise BadFile(path, str(e)) from None

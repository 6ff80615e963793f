"""Bundled-model format: a folder with `model.safetensors` and `config.json`.

config.json = {"format": "boardlens-gpt", "gpt": GPTConfig fields, "game": "othello",
"sae_layer": default block whose output is streamed, ...free-form card facts}. Loading never
unpickles anything (safetensors).

A folder whose config.json has `"random_init_seed": s` and no weights file is the paper's
random-init control: the same architecture with GPT's initialisation under torch seed s,
created deterministically on load (nothing to ship but the JSON).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from boardlens.atomic import write_atomic, write_json
from boardlens.files import (
    LAYER,
    BadFile,
    check,
    integer,
    load_safetensors,
    mapping,
    read_json,
    text,
)
from boardlens.lm.model import GPT, GPTConfig
from boardlens.registry import GAMES

FORMAT = "boardlens-gpt"


class CheckpointError(BadFile):
    """A model file that is missing, truncated or malformed; the message names the file."""


def save_model(model: GPT, folder: str | Path, meta: dict, dtype: torch.dtype = torch.float32) -> Path:
    """Write the model atomically (temp files + rename) and return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    cfg = {"format": FORMAT, "gpt": model.config.to_dict(), "dtype": str(dtype).split(".")[-1], **meta}
    write_atomic(folder / "model.safetensors", lambda p: save_file(tensors, str(p)))
    write_json(folder / "config.json", cfg)
    return folder


CONFIG = {"gpt": mapping(), "game": text(GAMES.names), "sae_layer": LAYER,
          "train_steps": integer(0, 2**62), "games_seen": integer(0, 2**62), "random_init_seed": integer(0, 2**63)}
"""A bundled model's config.json: the fields read beside 'gpt' (whose values GPTConfig checks)."""


def read_config(folder: str | Path) -> dict:
    path = Path(folder)
    if not path.is_dir():
        raise CheckpointError(path, "not a model folder (config.json + model.safetensors)" if path.exists()
                              else "not found")
    path = path / "config.json"
    cfg = read_json(path, "model config", error=CheckpointError)
    if cfg.get("format") != FORMAT or "gpt" not in cfg:
        raise CheckpointError(path, f"not a {FORMAT} config (missing 'format'/'gpt')")
    return check(cfg, CONFIG, path, required=("game",), error=CheckpointError)


def load_model(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[GPT, dict]:
    """Load a bundled model -> (model in eval mode, its config.json dict)."""
    cfg = read_config(folder)
    try:
        gpt_cfg = GPTConfig(**cfg["gpt"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{Path(folder) / 'config.json'}: bad 'gpt' section ({e})") from e
    if "random_init_seed" in cfg:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(int(cfg["random_init_seed"]))
        model = GPT(gpt_cfg)
        torch.random.set_rng_state(gen_state)
        return model.to(device=device, dtype=dtype).eval(), cfg
    model = fill_model(GPT(gpt_cfg), read_safetensors(Path(folder) / "model.safetensors"),
                       Path(folder) / "model.safetensors")
    return model.to(device=device, dtype=dtype), cfg


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(path, error=CheckpointError)


def fill_model(model: GPT, state: dict[str, torch.Tensor], path: Path) -> GPT:
    """Load `state` into `model` after checking names and shapes; eval mode, float32."""
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        raise CheckpointError(f"{path}: missing tensors {missing[:4]}, unexpected {extra[:4]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, expected {tuple(want[k].shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()

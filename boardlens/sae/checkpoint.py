"""Sweep checkpoints: complete or absent, never half written.

    <root>/step-000001000/             one complete checkpoint
        <sae>.safetensors, <sae>.json  the SAE for raw activations (what export/evaluators read)
        <sae>.state.pt                 the trainer's exact state (weights, Adam, schedules, RNG)
        sweep.pt                       the sweep's state (step, shuffle buffer, pending rows)
    <root>/latest -> step-000001000    symlink, swapped atomically

A checkpoint is written into a hidden `.step-N.tmp` folder, every file fsynced, then renamed
into place (one atomic rename) and `latest` is re-pointed (another). A kill at any moment
leaves the previous checkpoint intact; leftover temp folders are removed on the next write.
State files are read with `weights_only=True`: no arbitrary unpickling.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from boardlens.atomic import fsync_dir, fsync_file
from boardlens.files import BadFile, load_torch
from boardlens.sae.io import save_sae

STATE_SUFFIX = ".state.pt"


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        fsync_file(f)
    fsync_dir(folder)


def step_dir_name(step: int) -> str:
    return f"step-{step:09d}"


def write_checkpoint(root: str | Path, step: int, trainers, sweep_state: dict, meta: dict,
                     keep: int = 2) -> Path:
    """Write one complete checkpoint of the sweep at `step`; keep the newest `keep`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / step_dir_name(step)
    tmp = root / f".{final.name}.tmp"
    tmp.mkdir()
    for tr in trainers:
        save_sae(tmp, tr.name, tr.export_ae(), {"name": tr.name, "step": tr.step, **meta,
                                                 "hyperparams": tr.hyperparams(), "schedule": tr.schedule_state(),
                                                 "norm_scale": tr.norm_scale})
        torch.save(tr.state_dict(), tmp / f"{tr.name}{STATE_SUFFIX}")
    torch.save({**sweep_state, "saes": [tr.name for tr in trainers]}, tmp / "sweep.pt")
    _fsync_tree(tmp)
    if final.exists():  # the same step again (a resumed run that stopped at once): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    link = root / ".latest.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(final.name)
    os.replace(link, root / "latest")
    fsync_dir(root)
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder under root, or None."""
    root = Path(root)
    link = root / "latest"
    if link.is_dir() and (link / "sweep.pt").exists():
        return link.resolve()
    done = sorted(p for p in root.glob("step-*") if (p / "sweep.pt").exists())
    return done[-1] if done else None


def read_checkpoint(folder: str | Path) -> tuple[dict, dict[str, dict]]:
    """(sweep state, {sae name: trainer state}) of one checkpoint folder."""
    folder = Path(folder)
    sweep = load_torch(folder / "sweep.pt", "sweep checkpoint")  # a pickle of more than tensors is refused
    if not isinstance(sweep, dict) or not isinstance(sweep.get("saes"), list | tuple):
        raise BadFile(folder / "sweep.pt", "not a sweep checkpoint (no list of SAEs)")
    states = {name: load_torch(folder / f"{name}{STATE_SUFFIX}", "trainer state") for name in sweep["saes"]
              if isinstance(name, str) and "/" not in name}
    if len(states) != len(sweep["saes"]):
        raise BadFile(folder / "sweep.pt", "an SAE name that is not a plain string")
    return sweep, states


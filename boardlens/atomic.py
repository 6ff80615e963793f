"""Crash-safe file writes: the one helper every file the project writes goes through.

A reader, or a process restarted after a crash or power loss, sees either the old file or the
new one, never half of one: the content goes to `<name>.tmp` beside the target, is fsynced,
renamed over the target, and the directory is fsynced so the rename itself is durable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call write(tmp_path) to produce the content (e.g. `lambda p: torch.save(obj, p)`), then
    fsync it and rename it over `path`. On any error the target is untouched and tmp removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # e.g. --json results/scores.json
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text))


def write_json(path: str | Path, obj, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n")

"""Where a run's files live, for the services that write them and the tools that read them.

    <run>/                      evaluator: metrics.jsonl, final_metrics.json, descriptions/
    <run>/checkpoints/, train.jsonl, trainer_config.json    a trainer of the whole sweep
    <run>/shard-I-of-M/checkpoints/, train.jsonl, ...       or each of M trainer shards
"""

from __future__ import annotations

import re
from pathlib import Path

_SHARD = re.compile(r"shard-(\d+)-of-(\d+)")


def shard_folder(run: str | Path, index: int, count: int) -> Path:
    """Trainer shard I of M's folder in the run (the run folder itself for an unsplit sweep)."""
    return Path(run) if count == 1 else Path(run) / f"shard-{index}-of-{count}"


def run_parts(run: str | Path) -> list[Path]:
    """The folders of a run a trainer wrote into: the run folder, then each shard folder in
    shard order. Readers use it to take a sweep split over trainer shards as one run."""
    run = Path(run)
    shards = [(tuple(map(int, m.groups())), p) for p in run.glob("shard-*-of-*")
              if p.is_dir() and (m := _SHARD.fullmatch(p.name))]
    return [run, *(p for _, p in sorted(shards))]

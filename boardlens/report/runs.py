"""What the report reads: every evaluation of every SAE of one or more runs, and the references.

A source is a run folder (`metrics.jsonl`: one record per evaluation or reference, written
live by the evaluator; `trainer_config.json` for the batch size; `checkpoints/latest/*.json`
for each SAE's trainer kind, game and layer; `config.yaml`, where `up` wrote one, for the
model's weights digest; a sweep split over trainer shards has these in each
shard-I-of-M folder) or a `boardlens score` JSON file (final records
only: no curves). Records are the evaluator's (`boardlens.metrics.scorer`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from boardlens.files import BadFile, read_json
from boardlens.layout import run_parts

log = logging.getLogger("boardlens")


class ReportError(ValueError):
    """A one-line reason a source cannot be read."""


@dataclass
class SaeHistory:
    """One SAE of one source: its evaluations in step order."""

    name: str
    source: str  # the source's name (its folder or file name)
    kind: str  # trainer kind: checkpoint metadata, else the name's first part
    records: list[dict]
    tokens_per_step: int | None  # SAE training activations per step (None: unknown)

    @property
    def final(self) -> dict:
        return self.records[-1]

    def tokens(self, record: dict) -> int | None:
        return None if self.tokens_per_step is None else record["step"] * self.tokens_per_step


@dataclass
class Source:
    path: Path
    name: str
    saes: dict[str, SaeHistory] = field(default_factory=dict)
    references: dict[str, dict] = field(default_factory=dict)  # the newest record of each
    meta: dict = field(default_factory=dict)  # game, model, layer (from checkpoints, when known)

    @property
    def groups(self) -> list[str]:
        """Family groups every record has (e.g. 'average'; chess adds 'strategy_average')."""
        records = [h.final for h in self.saes.values()] + list(self.references.values())
        names = [set(r.get("averages", {})) for r in records]
        return sorted(set.intersection(*names), key=lambda g: (g != "average", g)) if names else []


def _records(path: Path) -> list[dict]:
    """metrics.jsonl's records; a torn last line (a live run writing) is skipped, any other bad
    line is skipped with a warning naming it."""
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i < len(lines):
                log.warning("%s line %d is not JSON: skipped", path, i)
            continue
        if isinstance(rec, dict) and ("sae" in rec or "reference" in rec) and "families" in rec:
            out.append(rec)
        elif isinstance(rec, dict) and ("describe" in rec or "describe_reference" in rec):
            continue  # a latent-description summary (`boardlens describe`'s, live): not plotted here
        else:
            log.warning("%s line %d is not an evaluation record: skipped", path, i)
    return out


def _checkpoint_meta(run: Path) -> dict[str, dict]:
    """{SAE name: its checkpoint metadata} from the newest checkpoint, if any."""
    out = {}
    for p in sorted(q for part in run_parts(run) for q in (part / "checkpoints" / "latest").glob("*.json")):
        try:
            meta = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(meta, dict) and "name" in meta:
            out[meta["name"]] = meta
    return out


def _kind(name: str, meta: dict | None) -> str:
    if meta and isinstance(meta.get("hyperparams"), dict) and meta["hyperparams"].get("kind"):
        return str(meta["hyperparams"]["kind"])
    return name.split("-")[0]


def _batch_size(run: Path) -> int | None:
    for part in run_parts(run):  # the run's trainer, or its shards' (they share the sweep's config)
        try:
            return int(json.loads((part / "trainer_config.json").read_text())["batch_size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def load_source(path: str | Path) -> Source:
    """A run folder or a `boardlens score` JSON file -> Source."""
    p = Path(path)
    if p.is_file():
        return _load_scores(p)
    metrics = p / "metrics.jsonl"
    if not metrics.is_file():
        raise ReportError(f"{p}: no metrics.jsonl (not a run folder, nor a `boardlens score` JSON file)")
    src = Source(p, p.resolve().name)
    metas = _checkpoint_meta(p)
    per_step = _batch_size(p)
    for rec in _records(metrics):
        if "reference" in rec:
            src.references[rec["reference"]] = rec
            continue
        name = rec["sae"]
        if name not in src.saes:
            src.saes[name] = SaeHistory(name, src.name, _kind(name, metas.get(name)), [], per_step)
        src.saes[name].records.append(rec)
    if not src.saes:
        raise ReportError(f"{metrics}: no SAE evaluations yet")
    for h in src.saes.values():
        h.records.sort(key=lambda r: r["step"])
    src.saes = dict(sorted(src.saes.items(), key=lambda kv: (kv[1].kind, kv[0])))  # grouped by kind
    some = next(iter(metas.values()), {})
    src.meta = {k: some[k] for k in ("game", "model", "layer") if k in some}
    if weights := _weights(p):
        src.meta["weights"] = weights
    return src


def _weights(run: Path) -> str | None:
    """'sha256 <digest>' of the run's model (`up`'s config.yaml names it), when it is still there."""
    import yaml

    from boardlens.lm.formats import model_digest

    try:
        model = Path(yaml.safe_load((run / "config.yaml").read_text())["producer"]["model"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return f"sha256 {model_digest(model)}" if model.exists() else None


def _load_scores(path: Path) -> Source:
    try:
        data = read_json(path, "score file")
    except BadFile as e:
        raise ReportError(str(e)) from None
    if not isinstance(data.get("saes"), dict) or not data["saes"] or not all(
            isinstance(r, dict) for r in data["saes"].values()):
        raise ReportError(f"{path}: no 'saes' records (expected `boardlens score` output)")
    src = Source(path, path.stem)
    for name, rec in data["saes"].items():
        src.saes[name] = SaeHistory(name, src.name, _kind(name, None), [rec], None)
    src.references = dict(data.get("references") or {})
    return src

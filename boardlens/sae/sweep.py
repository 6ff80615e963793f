"""Trainer specs: `kind[:key=value,...]` strings -> trainers that train together.

    standard:penalty=0.05,d_sae=4096
    p_anneal:penalty=0.03,anneal_start=1000

Each trainer gets a stable name (`<kind>-<d_sae>-<penalty>` unless `name=` is given) used in
checkpoints, snapshots and metric labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from boardlens.sae.base import SAETrainer
from boardlens.sae.p_anneal import PAnnealTrainer
from boardlens.sae.standard import StandardTrainer

TRAINERS: dict[str, type[SAETrainer]] = {"standard": StandardTrainer, "p_anneal": PAnnealTrainer}
_FLOAT = {"penalty", "lr", "p_start", "p_end"}
_INT = {"d_sae", "warmup_steps", "seed", "anneal_start", "n_updates", "queue_len"}
_STR = {"name", "recon"}


@dataclass(frozen=True)
class TrainerSpec:
    kind: str
    """Trainer kind: one of TRAINERS."""
    options: dict = field(default_factory=dict)
    """Keyword overrides (penalty, d_sae, lr, ...)."""

    @classmethod
    def parse(cls, text: str) -> TrainerSpec:
        kind, _, rest = text.strip().partition(":")
        if kind not in TRAINERS:
            raise ValueError(f"unknown trainer {kind!r} in {text!r}; known: {sorted(TRAINERS)}")
        opts: dict = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq:
                raise ValueError(f"{text!r}: expected key=value, got {item!r}")
            if key in _FLOAT:
                opts[key] = float(value)
            elif key in _INT:
                opts[key] = int(value)
            elif key in _STR:
                opts[key] = value.strip()
            else:
                raise ValueError(f"{text!r}: unknown option {key!r}")
            if key == "anneal_start" and kind != "p_anneal":
                raise ValueError(f"{text!r}: anneal_start only applies to p_anneal")
        return cls(kind, opts)

    def __str__(self) -> str:
        return self.kind + (":" + ",".join(f"{k}={v}" for k, v in self.options.items()) if self.options else "")


def build_trainers(specs: list[TrainerSpec], d_in: int, total_steps: int, defaults: dict,
                   device: str = "cpu") -> list[SAETrainer]:
    """Instantiate the sweep. `defaults` supplies d_sae, penalty, lr, warmup_steps, recon, ..."""
    trainers: list[SAETrainer] = []
    for i, spec in enumerate(specs):
        o = {**defaults, "seed": i, **spec.options}
        name = o.pop("name", None) or f"{spec.kind}-{o['d_sae']}-{o['penalty']:g}"
        kw = {k: o[k] for k in ("lr", "warmup_steps", "recon", "seed") if k in o}
        extra = {}
        if spec.kind == "p_anneal":
            extra = {k: o[k] for k in ("anneal_start", "p_start", "p_end", "n_updates", "queue_len") if k in o}
            extra["total_steps"] = total_steps
            extra.setdefault("anneal_start", min(10_000, total_steps // 3))
        trainers.append(TRAINERS[spec.kind](name, d_in, o["d_sae"], o["penalty"], device=device, **kw, **extra))
    names = [t.name for t in trainers]
    if len(set(names)) != len(names):
        raise ValueError(f"trainer names must be unique, got {names}")
    return trainers

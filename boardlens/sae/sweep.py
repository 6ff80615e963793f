"""Trainer specs: `kind[:key=value,...]` strings -> the trainers of one sweep.

    standard:penalty=0.05,d_sae=4096
    p_anneal:penalty=0.03,anneal_start=1000
    topk:k=32,d_sae=8192

A value may be a grid: `a|b|c` (alternatives) or `lo..hi/n` (n values evenly spaced, ends
included). One spec then expands to the cartesian product, e.g. the paper's sweep of one
trainer, 20 penalties x 2 sizes:

    p_anneal:penalty=0.02..0.08/20,d_sae=4096|8192

Each trainer gets a stable name, a function of its spec only: `<kind>-<d_sae>-<penalty>`
(`<kind>-<d_sae>-k<k>` for the TopK family), plus `-<key><value>` for any other option a
grid varies; `name=` overrides it. Names label checkpoints, snapshots and metrics.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from boardlens.parse import parse_bool
from boardlens.sae.base import SAETrainer
from boardlens.sae.batch_topk import BatchTopKTrainer
from boardlens.sae.gated import GatedTrainer
from boardlens.sae.gated_anneal import GatedAnnealTrainer
from boardlens.sae.p_anneal import PAnnealTrainer
from boardlens.sae.standard import StandardTrainer
from boardlens.sae.topk import TopKTrainer

TRAINERS: dict[str, type[SAETrainer]] = {
    cls.kind: cls for cls in (StandardTrainer, PAnnealTrainer, GatedTrainer, GatedAnnealTrainer,
                              TopKTrainer, BatchTopKTrainer)
}
TOPK_KINDS = ("topk", "batch_topk")
ANNEAL_KINDS = ("p_anneal", "gated_anneal")

# option -> type; which kinds accept it (None = all)
_COMMON = {"name": str, "d_sae": int, "lr": float, "warmup_steps": int, "decay_start": int,
           "sparsity_warmup_steps": int, "recon": str, "seed": int, "normalize": bool}
_ONLY: dict[str, tuple[type, tuple[str, ...]]] = {
    "penalty": (float, ("standard", "p_anneal", "gated", "gated_anneal")),
    "resample_every": (int, ("standard", "p_anneal")),
    **{k: (t, ANNEAL_KINDS) for k, t in (("anneal_start", int), ("p_start", float), ("p_end", float),
                                          ("n_updates", int), ("queue_len", int))},
    **{k: (t, TOPK_KINDS) for k, t in (("k", int), ("auxk_alpha", float), ("auxk_dead_tokens", int),
                                        ("threshold_beta", float), ("threshold_start_step", int))},
}


def _option_type(kind: str, key: str, text: str) -> type:
    if key in _COMMON:
        return _COMMON[key]
    if key in _ONLY:
        typ, kinds = _ONLY[key]
        if kind not in kinds:
            raise ValueError(f"{text!r}: {key} does not apply to {kind} (only to {', '.join(kinds)})")
        return typ
    raise ValueError(f"{text!r}: unknown option {key!r}")


def _scalar(typ: type, value: str, text: str):
    value = value.strip()
    try:
        return parse_bool(value) if typ is bool else typ(value)
    except ValueError:
        raise ValueError(f"{text!r}: {value!r} is not a valid {typ.__name__}") from None


def _values(typ: type, value: str, text: str) -> list:
    """One option's values: a scalar, `a|b|c`, or `lo..hi/n`."""
    if "|" in value:
        return [_scalar(typ, v, text) for v in value.split("|")]
    if ".." in value and typ in (int, float):
        span, _, n = value.partition("/")
        lo, _, hi = span.partition("..")
        n = _scalar(int, n or "x", text)
        if n < 1:
            raise ValueError(f"{text!r}: a range needs /n with n >= 1")
        a, b = _scalar(float, lo, text), _scalar(float, hi, text)
        vals = [a + (b - a) * i / (n - 1) if n > 1 else a for i in range(n)]
        return [typ(round(v)) if typ is int else v for v in vals]
    return [_scalar(typ, value, text)]


@dataclass(frozen=True)
class TrainerSpec:
    kind: str
    """Trainer kind: one of TRAINERS."""
    options: dict = field(default_factory=dict)
    """Keyword overrides (penalty, d_sae, lr, k, ...)."""
    varied: tuple[str, ...] = ()
    """Options a grid varied (they join the default name)."""

    @classmethod
    def expand(cls, text: str) -> list[TrainerSpec]:
        """All specs of one spec string (one, or a grid's cartesian product)."""
        kind, _, rest = text.strip().partition(":")
        if kind not in TRAINERS:
            raise ValueError(f"unknown trainer {kind!r} in {text!r}; known: {sorted(TRAINERS)}")
        grid: dict[str, list] = {}
        for item in filter(None, (i.strip() for i in rest.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq:
                raise ValueError(f"{text!r}: expected key=value, got {item!r}")
            if key in grid:
                raise ValueError(f"{text!r}: {key} given twice")
            grid[key] = _values(_option_type(kind, key, text), value, text)
        varied = tuple(k for k, v in grid.items() if len(v) > 1)
        if "name" in varied or ("name" in grid and varied):
            raise ValueError(f"{text!r}: name= cannot be combined with a grid")
        keys = list(grid)
        return [cls(kind, dict(zip(keys, combo, strict=True)), varied) for combo in itertools.product(*grid.values())]

    @classmethod
    def parse(cls, text: str) -> TrainerSpec:
        specs = cls.expand(text)
        if len(specs) != 1:
            raise ValueError(f"{text!r} is a grid of {len(specs)} trainers; expand() it")
        return specs[0]

    def __str__(self) -> str:
        return self.kind + (":" + ",".join(f"{k}={v}" for k, v in self.options.items()) if self.options else "")


def expand_specs(texts) -> list[TrainerSpec]:
    return [spec for text in texts for spec in TrainerSpec.expand(text)]


def default_name(kind: str, o: dict, varied: tuple[str, ...]) -> str:
    size = f"k{o['k']}" if kind in TOPK_KINDS else f"{o['penalty']:g}"
    extra = "".join(f"-{k}{o[k]:g}" if isinstance(o[k], float) else f"-{k}{o[k]}"
                    for k in varied if k not in ("d_sae", "penalty", "k"))
    return f"{kind}-{o['d_sae']}-{size}{extra}"


def build_trainers(specs: list[TrainerSpec], d_in: int, total_steps: int, defaults: dict,
                   device: str = "cpu") -> list[SAETrainer]:
    """Instantiate the sweep. `defaults` supplies d_sae, penalty, lr, warmup_steps, recon, k, ...

    Trainer i is seeded with i unless its spec sets `seed`.
    """
    trainers: list[SAETrainer] = []
    for i, spec in enumerate(specs):
        cls = TRAINERS[spec.kind]
        accepted = set(_COMMON) | {k for k, (_, kinds) in _ONLY.items() if spec.kind in kinds}
        o = {k: v for k, v in defaults.items() if k in accepted and v is not None}
        o = {"seed": i, **o, **spec.options}
        if spec.kind in TOPK_KINDS:
            o.setdefault("k", 32)
        else:
            o.setdefault("penalty", 0.05)
        if spec.kind in ANNEAL_KINDS:
            o.setdefault("anneal_start", min(10_000, total_steps // 3))
        name = o.pop("name", None) or default_name(spec.kind, o, spec.varied)
        d_sae = o.pop("d_sae")
        trainers.append(cls(name, d_in, d_sae, total_steps=total_steps, device=device, **o))
    names = [t.name for t in trainers]
    if len(set(names)) != len(names):
        raise ValueError(f"trainer names must be unique, got {names}")
    return trainers

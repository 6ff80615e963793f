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

import dataclasses
import itertools
import typing
from dataclasses import dataclass, field

from boardlens.parse import coerce
from boardlens.registry import TRAINERS
from boardlens.sae.base import SAETrainer


def option_types(kind: str) -> dict[str, object]:
    """The spec keys of a trainer kind -> their types: its Options' fields, and `name`."""
    return {"name": str, **typing.get_type_hints(TRAINERS[kind].Options)}


def _option_type(kind: str, key: str, text: str):
    types = option_types(kind)
    if key in types:
        return types[key]
    others = [k for k in TRAINERS.names() if key in option_types(k)]
    if others:
        raise ValueError(f"{text!r}: {key} does not apply to {kind} (only to {', '.join(others)})")
    raise ValueError(f"{text!r}: unknown option {key!r}; {kind} takes {', '.join(types)}")


def _scalar(typ, value: str, text: str):
    try:
        return coerce(value, typ, text)
    except ValueError:
        raise ValueError(f"{text!r}: {value.strip()!r} is not a valid {getattr(typ, '__name__', typ)}") from None


def _values(typ, value: str, text: str) -> list:
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
    """Trainer kind: a name registered in boardlens.registry.TRAINERS."""
    options: dict = field(default_factory=dict)
    """Keyword overrides (penalty, d_sae, lr, k, ...)."""
    varied: tuple[str, ...] = ()
    """Options a grid varied (they join the default name)."""

    @classmethod
    def expand(cls, text: str) -> list[TrainerSpec]:
        """All specs of one spec string (one, or a grid's cartesian product)."""
        kind, _, rest = text.strip().partition(":")
        if kind not in TRAINERS:
            raise ValueError(f"unknown trainer {kind!r} in {text!r}; known: {', '.join(TRAINERS.names())}")
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
        specs = [cls(kind, dict(zip(keys, combo, strict=True)), varied) for combo in itertools.product(*grid.values())]
        for spec in specs:  # invalid values fail here, at config time, with the spec in the message
            try:
                spec.options_with({})
            except ValueError as e:
                raise ValueError(f"{text!r}: {e}") from None
        return specs

    @classmethod
    def parse(cls, text: str) -> TrainerSpec:
        specs = cls.expand(text)
        if len(specs) != 1:
            raise ValueError(f"{text!r} is a grid of {len(specs)} trainers; expand() it")
        return specs[0]

    def options_with(self, defaults: dict, seed: int = 0):
        """This spec's Options: the kind's defaults < `defaults` (sweep-wide, those the kind
        takes) < seed < the spec's own values."""
        cls = TRAINERS[self.kind].Options
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in defaults.items() if k in names and v is not None}
        own = {k: v for k, v in self.options.items() if k != "name"}
        return cls(**{**given, "seed": seed, **own})

    def __str__(self) -> str:
        return self.kind + (":" + ",".join(f"{k}={v}" for k, v in self.options.items()) if self.options else "")


def expand_specs(texts) -> list[TrainerSpec]:
    return [spec for text in texts for spec in TrainerSpec.expand(text)]


def default_name(kind: str, o: dict, varied: tuple[str, ...]) -> str:
    size = f"k{o['k']}" if "k" in o else f"{o['penalty']:g}" if "penalty" in o else ""
    extra = "".join(f"-{k}{o[k]:g}" if isinstance(o[k], float) else f"-{k}{o[k]}"
                    for k in varied if k not in ("d_sae", "penalty", "k"))
    return f"{kind}-{o['d_sae']}" + (f"-{size}" if size else "") + extra


def build_trainers(specs: list[TrainerSpec], d_in: int, total_steps: int, defaults: dict,
                   device: str = "cpu", shard: tuple[int, int] = (0, 1)) -> list[SAETrainer]:
    """Instantiate the sweep. `defaults`: sweep-wide option values (d_sae, penalty, lr, k, ...;
    None = the kind's own default), each applied to the kinds that take it.

    Trainer i is seeded with i unless its spec sets `seed`. shard (I, M): only the trainers
    i with i % M == I are built, each with the name and seed it has in the whole sweep, so
    M shards together train exactly the SAEs one process would.
    """
    opts = [spec.options_with(defaults, seed=i) for i, spec in enumerate(specs)]
    names = [spec.options.get("name") or default_name(spec.kind, dataclasses.asdict(o), spec.varied)
             for spec, o in zip(specs, opts, strict=True)]
    if len(set(names)) != len(names):
        raise ValueError(f"trainer names must be unique, got {names}")
    index, count = shard
    return [TRAINERS[spec.kind](name, d_in, o, total_steps=total_steps, device=device)
            for i, (spec, o, name) in enumerate(zip(specs, opts, names, strict=True)) if i % count == index]


def options_table() -> str:
    """Markdown: every trainer kind with its loss and own options, then every option with its
    default (generated from the Options dataclasses: `boardlens sae options`, the README)."""
    from boardlens.parse import field_docs
    from boardlens.sae.base import TrainerOptions

    kinds = list(TRAINERS.values())
    common = [f.name for f in dataclasses.fields(TrainerOptions)]
    docs: dict = {}
    defaults: dict = {}
    for cls in kinds:
        docs |= field_docs(cls.Options)
        defaults |= {f.name: f.default for f in dataclasses.fields(cls.Options)}
    rows = ["| kind | SAE | loss (recon default) | own options |", "|---|---|---|---|"]
    for cls in kinds:
        own = [f"`{n}`" for n in option_types(cls.kind) if n not in common and n != "name"]
        rows.append(f"| `{cls.kind}` | {cls.arch} | {cls.summary} (`{cls.default_recon}`) | {' '.join(own)} |")
    rows += ["", "| option | kinds | default | meaning |", "|---|---|---|---|"]
    for name in defaults:
        users = "every kind" if name in common else ", ".join(c.kind for c in kinds if name in option_types(c.kind))
        shown = "-" if defaults[name] in (None, "") else f"`{defaults[name]}`"
        rows.append(f"| `{name}` | {users} | {shown} | {docs[name]} |")
    return "\n".join(rows) + "\n"

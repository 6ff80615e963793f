"""One registry per extensible concept: SAE architectures, trainer kinds, games.

Each built-in lives in its own module, which registers itself when imported; a registry
imports its built-in modules on first use (the one line per built-in is in `ARCHS`, `TRAINERS`
and `GAMES` below), then the plugins:

- modules named by the `boardlens.plugins` entry-point group of installed distributions
  (`[project.entry-points."boardlens.plugins"] mything = "mything.boardlens_plugin"`);
- modules named in the BOARDLENS_PLUGINS environment variable (comma-separated), which `up`
  and Kubernetes pass on to every service.

A plugin module registers with the same calls as the built-ins, e.g. `TRAINERS.register(MyTrainer)`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
PLUGIN_GROUP = "boardlens.plugins"
PLUGIN_ENV = "BOARDLENS_PLUGINS"
_plugins_loaded: set[str] = set()


def load_plugins() -> None:
    """Import every plugin module once (entry points, then BOARDLENS_PLUGINS)."""
    names = [ep.value for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP)]
    names += [n.strip() for n in os.environ.get(PLUGIN_ENV, "").split(",") if n.strip()]
    for name in names:
        if name in _plugins_loaded:
            continue
        _plugins_loaded.add(name)
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"boardlens plugin {name!r} cannot be imported: {e}") from e


class Registry(Generic[T]):
    """name -> T, filled by `register` from built-in modules (imported on first lookup) and plugins."""

    def __init__(self, what: str, builtins: tuple[str, ...]) -> None:
        self.what, self.builtins = what, builtins
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, item: T) -> T:
        """Add `item` under `name`; registering the same object again is a no-op."""
        if self._items.get(name, item) is not item:
            raise ValueError(f"{self.what} {name!r} is already registered ({self._items[name]!r})")
        self._items[name] = item
        return item

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: a built-in that looks something up while importing
            for module in self.builtins:
                importlib.import_module(module)
            load_plugins()

    def __getitem__(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise ValueError(f"unknown {self.what} {name!r}; known: {', '.join(self.names())}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def names(self) -> tuple[str, ...]:
        """Registered names, built-ins first, in registration order."""
        self._load()
        return tuple(self._items)

    def values(self) -> Iterator[T]:
        self._load()
        return iter(list(self._items.values()))


ARCHS: Registry = Registry("SAE architecture", (
    "boardlens.sae.archs.relu", "boardlens.sae.archs.gated", "boardlens.sae.archs.topk",
    "boardlens.sae.archs.batch_topk",
))
TRAINERS: Registry = Registry("trainer kind", (
    "boardlens.sae.standard", "boardlens.sae.p_anneal", "boardlens.sae.gated", "boardlens.sae.gated_anneal",
    "boardlens.sae.topk", "boardlens.sae.batch_topk",
))
GAMES: Registry = Registry("game", ("boardlens.games.othello", "boardlens.games.chess"))

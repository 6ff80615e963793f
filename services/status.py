"""Typed status records: how far each service has got, for `boardlens up` or any other watcher.

Each service rewrites `<folder>/<service>_status.json` atomically (boardlens.atomic) every
`every_s` seconds while it makes progress, and once more when it stops. The folder is the
trainer's and evaluator's run folder and the producer's `status_dir` (`up` sets it to the run
folder). A watcher reads the records with `read_status`, which
returns the dataclass below or None; it never parses the text of /metrics, which is
Prometheus' interface, changes with metric names and needs a metrics port.

The record is the dataclass's fields as a JSON object, plus `schema` (SCHEMA) and `service`.
Adding a field with a default is compatible (readers ignore what they do not know); renaming
or retyping one needs a new SCHEMA.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar, get_args, get_origin, get_type_hints

from boardlens.atomic import write_json

SCHEMA = 1
log = logging.getLogger("boardlens")


@dataclass(frozen=True)
class ServiceStatus:
    """What every record holds."""

    service: ClassVar[str] = ""
    state: str = "starting"
    """The service's own words: 'running', 'waiting for the producer', 'stopped', ..."""
    time: float = 0.0
    """Unix time of the write."""
    pid: int = 0

    @property
    def progress(self) -> int:
        """A count that grows while the service does its work (a watcher's stall test)."""
        raise NotImplementedError


@dataclass(frozen=True)
class ProducerStatus(ServiceStatus):
    service: ClassVar[str] = "producer"
    tokens: int = 0
    """Valid token positions streamed (all runs of a stream continued from its state file)."""
    batches: int = 0
    """Batches taken from the game source."""
    games: int = 0
    """Games streamed (the next game id)."""
    seq: int = 0
    """Sequence number of the next message."""

    @property
    def progress(self) -> int:
        return self.tokens


@dataclass(frozen=True)
class SaeTraining:
    """One SAE on its latest training batch."""

    loss: float
    l0: float
    var_explained: float


@dataclass(frozen=True)
class StreamCount:
    """What a trainer took from one producer's current epoch."""

    epoch: str
    batches: int
    rows: int
    """Valid positions (activations) of those batches."""
    first_seq: int
    last_seq: int


@dataclass(frozen=True)
class TrainerStatus(ServiceStatus):
    service: ClassVar[str] = "trainer"
    step: int = 0
    """Sweep steps done (every SAE steps together)."""
    tokens: int = 0
    """Activations received from the producer by this process."""
    saes: dict[str, SaeTraining] = field(default_factory=dict)
    streams: dict[str, StreamCount] = field(default_factory=dict)
    """Per producer (its name, meta 'src'): batches and rows taken from its current epoch."""
    gone: list[str] = field(default_factory=list)
    """Producers declared gone (silent for sender_timeout_s) and not heard since."""

    @property
    def progress(self) -> int:
        return self.step


@dataclass(frozen=True)
class SaeEvaluation:
    """One SAE's latest evaluated snapshot: its scores averaged over every family."""

    step: int
    coverage: float
    reconstruction: float


@dataclass(frozen=True)
class EvaluatorStatus(ServiceStatus):
    service: ClassVar[str] = "evaluator"
    games: dict[str, int] = field(default_factory=dict)
    """Games in the eval set so far, per split."""
    evaluations: int = 0
    saes: dict[str, SaeEvaluation] = field(default_factory=dict)
    references: dict[str, float] = field(default_factory=dict)
    """Each floor/ceiling reference's reconstruction averaged over every family."""
    gone: list[str] = field(default_factory=list)
    """Trainer shards (snapshot senders) declared gone before their end and not heard since."""

    @property
    def progress(self) -> int:
        return self.evaluations + sum(self.games.values())


S = TypeVar("S", bound=ServiceStatus)


def status_path(folder: str | Path, service: str) -> Path:
    return Path(folder) / f"{service}_status.json"


def write_status(folder: str | Path, status: ServiceStatus) -> Path:
    record = {"schema": SCHEMA, "service": status.service, **dataclasses.asdict(status)}
    return write_json(status_path(folder, status.service), record, indent=None)


def read_status(folder: str | Path, cls: type[S]) -> S | None:
    """The service's latest record; None if there is none, or not one of this schema."""
    try:
        data = json.loads(status_path(folder, cls.service).read_text())
        if data.get("schema") != SCHEMA or data.get("service") != cls.service:
            return None
        return _build(cls, data)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _build(cls: type, data: dict):
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: not an object")
    hints = get_type_hints(cls)
    return cls(**{f.name: _typed(hints[f.name], data[f.name], f.name)
                  for f in dataclasses.fields(cls) if f.name in data or _required(f)})


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _typed(hint, value, name: str):
    """value checked against its field's type (a float field takes an int: JSON has one number)."""
    if get_origin(hint) is dict:
        _, item = get_args(hint)
        if not isinstance(value, dict):
            raise TypeError(f"{name}: not an object")
        return {str(k): _typed(item, v, f"{name}.{k}") for k, v in value.items()}
    if get_origin(hint) is list:
        (item,) = get_args(hint)
        if not isinstance(value, list):
            raise TypeError(f"{name}: not an array")
        return [_typed(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value)
    if hint is float and type(value) in (int, float):
        return float(value)
    if type(value) is not hint:
        raise TypeError(f"{name}: {type(value).__name__}, not {hint.__name__}")
    return value


class StatusFile:
    """Rewrites one service's record, at most every `every_s` seconds unless forced.

    `make(state)` builds the record; it is called only when a write is due, so a service can
    call `update` on every message at no cost. A failed write is logged once and never stops
    the service: the record is for watchers, the service's work does not depend on it.
    """

    def __init__(self, folder: str | Path, make: Callable[[str], ServiceStatus], every_s: float = 2.0) -> None:
        self.folder, self.make, self.every_s = Path(folder), make, every_s
        self._last = -float("inf")
        self._warned = False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # the first write says why

    def update(self, state: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        try:
            write_status(self.folder, self.make(state))
        except OSError as e:
            if not self._warned:
                log.warning("cannot write the status record in %s: %s", self.folder, e)
                self._warned = True


def stamp(state: str) -> dict:
    """The common fields of a record written now by this process."""
    return {"state": state, "time": time.time(), "pid": os.getpid()}

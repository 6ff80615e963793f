"""What every service process shares: logging, stop signals, torch setup, transport options,
and the receive loop that turns frames into batches and counts what it rejects or loses."""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from boardlens.atomic import write_json
from boardlens.protocol import (
    REASONS,
    ProtocolError,
    Publisher,
    Streams,
    Subscriber,
    TransportConfig,
)
from boardlens.protocol.intake import Admitted, admit, settle
from boardlens.services.config import ServiceOptions, to_json
from boardlens.services.metrics import Channel
from boardlens.services.status import ServiceStatus, StatusFile
from boardlens.services.telemetry import Telemetry

log = logging.getLogger("boardlens")
EXIT_INCOMPLETE = 4
"""Exit status of a consumer whose stream ended because senders were declared gone (not every
one sent its end): what it received is used, the run is not whole."""


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def log_config(service: str, cfg) -> None:
    """The one line of resolved config every service logs at start."""
    log.info("%s config %s", service, to_json(cfg))


class StartupError(RuntimeError):
    """A service cannot start with this config (the message says why); the CLI prints it in one line."""


def stop_on_signals() -> threading.Event:
    """An Event set by SIGTERM or SIGINT: loops check it and shut down cleanly."""
    stop = threading.Event()

    def handler(signum, _frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, handler)
    return stop


def prepare_run_dir(service: str, cfg, folder: str | None = None) -> Path:
    """Create the run folder (or `folder`, a shard's) and record the config there; a one-line
    StartupError if we cannot."""
    run_dir = Path(folder or cfg.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / f"{service}_config.json", dataclasses.asdict(cfg))
    except OSError as e:
        raise StartupError(f"cannot write the run folder {run_dir}: {e.strerror or e}") from e
    return run_dir


def keep_status(tel: Telemetry, folder: str | Path, make: Callable[[str], ServiceStatus]) -> None:
    """Keep the service's status record (services.status) in `folder` ('' = none) up to date
    as it reports progress."""
    if folder:
        tel.status = StatusFile(Path(folder), make)
        tel.status.update("starting", force=True)


def sender_name(bind: str) -> str:
    """A sender's default name in its messages (meta 'src'): host and bound port (or ipc path),
    stable across restarts and distinct between senders on one host."""
    where = bind.rpartition(":")[2] if bind.startswith("tcp://") else bind
    return f"{socket.gethostname()}:{where}"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads(n: int) -> None:
    if n:
        torch.set_num_threads(n)


def curve(cfg: ServiceOptions, side: str):
    """The service's CURVE keys for one side ('server' binds, 'client' connects), or None."""
    if not cfg.curve_keys:
        return None
    from boardlens.protocol.security import CurveKeyError, client_keys, server_keys

    try:
        return server_keys(cfg.curve_keys) if side == "server" else client_keys(cfg.curve_keys)
    except CurveKeyError as e:
        raise StartupError(str(e)) from e


def close_context() -> None:
    """Stop this process's ZAP handler, then terminate the context (waits out the lingers)."""
    import zmq

    from boardlens.protocol.security import stop_authenticator

    ctx = zmq.Context.instance()
    stop_authenticator(ctx)
    ctx.term()


def transport(cfg: ServiceOptions) -> TransportConfig:
    return TransportConfig(
        sndhwm_msgs=cfg.sndhwm_msgs, send_timeout_ms=cfg.send_timeout_ms,
        heartbeat_ivl_ms=cfg.heartbeat_ivl_ms, heartbeat_timeout_ms=cfg.heartbeat_timeout_ms,
    )


class Rejected(ValueError):
    """A well-formed message the consumer's handler refuses; `reason` is its counter label."""

    reason = "rejected"


class IncompatibleBatch(Rejected):
    """A well-formed batch this consumer cannot use (another width or game than its stream's)."""

    reason = "incompatible"


class BadSnapshot(Rejected):
    """A snapshot whose meta or tensors do not describe a usable SAE."""

    reason = "snapshot_schema"


HANDLER_REASONS = (IncompatibleBatch.reason, BadSnapshot.reason)
MAX_SOURCE_LABELS = 32
"""Senders that get their own `source` label value (a sweep's producers and shards); the rest
count under 'other'."""


class MessageCounters:
    """Per-channel counters of received, rejected and lost messages (a catalogue Channel)."""

    def __init__(self, tel: Telemetry, channel: Channel) -> None:
        self.received = tel.metric(channel.received)
        self.rejected = tel.metric(channel.rejected)
        for reason in (*REASONS, *HANDLER_REASONS):  # zero series: rate() sees the first
            self.rejected.labels(reason)
        self.lost = tel.metric(channel.lost)
        self.gone = tel.metric(channel.gone)
        self.bytes = tel.metric(channel.bytes)
        self.streams = Streams()  # (epoch, seq) per sender: a consumer may hear several
        self.labelled: set[str] = set()  # senders with their own `source` label value

    def source_label(self, source: str) -> str:
        """The `source` label of a sender: its name once it has had a message accepted, for
        the first MAX_SOURCE_LABELS such senders; 'other' beyond (an unauthenticated peer
        inventing names must not open a series per name)."""
        if source not in self.labelled and len(self.labelled) < MAX_SOURCE_LABELS:
            self.labelled.add(source)
            self.lost.labels(source or "-")  # zero series: rate() and the alerts see the first one
            self.gone.labels(source or "-")
        return (source or "-") if source in self.labelled else "other"

    def expire(self, sub: Subscriber, timeout_s: float) -> list[str]:
        """Declare the senders of `sub` silent for more than timeout_s gone (Streams.expire_idle):
        counted and logged; -> their names."""
        lost = self.streams.expire_idle(sub, timeout_s)
        for source in lost:
            self.gone.labels(self.source_label(source)).inc()
            log.error("sender %s declared gone: nothing from it, not even a heartbeat, for %.0f s",
                      source or "-", timeout_s)
        return lost

    def settle(self, admitted: Admitted, accepted: bool) -> None:
        """protocol.intake.settle, counting what an accepted message reveals was lost."""
        lost = settle(self.streams, admitted, accepted)
        if accepted:
            label = self.source_label(admitted.source)
            if lost:
                self.lost.labels(label).inc(lost)
                log.warning("lost %d messages before seq %d%s", lost, admitted.header.seq,
                            f" of {admitted.source}" if admitted.source else "")


def keep_alive(pub: Publisher, every_s: float, make_frames: Callable[[], list]) -> None:
    """Send a heartbeat (`make_frames()`, kind 'heartbeat') when `pub` has sent nothing for
    every_s seconds, so that its consumers do not declare it gone while it has nothing to send."""
    if time.monotonic() - pub.last_sent >= every_s:
        pub.beat(make_frames())


def receive(sub: Subscriber, counters: MessageCounters, timeout_ms: int,
            on_message: Callable) -> bool:
    """Receive one message, decode and validate it, hand it on. False when nothing came (a
    heartbeat only marks its sender alive: True, not handed on).

    `on_message(kind, message_or_batch)` gets an ActivationBatch for kind 'batch' and the raw
    protocol Message otherwise. Bad messages, and messages the handler refuses (Rejected),
    are counted by reason and skipped, as are messages out of sequence
    (Streams, per sender: replays, implausible jumps, a stale epoch, a foreign 'end'); none of
    them changes its sender's stream (protocol.intake). An accepted 'end' is confirmed to the
    sender (it waits for that before it exits);
    `counters.streams.finished(len(sub.connected))` says when every sender has ended or gone
    (`counters.expire`).
    """
    frames = sub.recv(timeout_ms)
    if frames is None:
        return False
    counters.bytes.inc(sum(len(f.buffer) for f in frames))
    try:
        admitted = admit(frames, counters.streams)
    except ProtocolError as e:
        counters.rejected.labels(e.reason).inc()
        log.warning("rejected message: %s", e)
        return True
    counters.received.inc()
    h = admitted.header
    if h.kind == "heartbeat":
        counters.settle(admitted, True)
        return True
    if h.kind == "end":  # everything before it has been handed on: confirm to the sender
        counters.settle(admitted, True)
        sub.confirm_end(h.epoch, h.seq)
    try:
        on_message(h.kind, admitted.payload)
    except Rejected as e:
        counters.rejected.labels(e.reason).inc()
        log.warning("skipped message: %s", e)
        counters.settle(admitted, False)
        return True
    if h.kind != "end":
        counters.settle(admitted, True)
    return True

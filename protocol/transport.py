"""ZeroMQ sockets for the protocol: a producer-side Publisher, consumer-side Subscribers.

The only module of the package that imports zmq. Semantics (details in protocol/SPEC.md):
  - lossless endpoint: XPUB with XPUB_NODROP. Every connected, subscribed consumer gets every
    message, in order. A consumer that falls `sndhwm + rcvhwm` messages (plus kernel socket
    buffers) behind blocks the producer's send for up to send_timeout_ms, then SendTimeout.
  - lossy endpoint: plain XPUB. Never blocks the producer; a slow consumer silently misses
    whole messages (multipart messages are never torn). For metrics-style consumers.
  - Messages sent before a consumer's subscription reached the producer are not delivered to
    it (the "slow joiner" race); `wait_for_subscribers` closes it for the lossless endpoint.
  - Consumers count losses with SeqTracker over (epoch, seq), which also rejects replays,
    implausible jumps and a stale producer coming back (SPEC.md, section 8).
  - End of stream is acknowledged: a lossless Subscriber names itself to the publisher and,
    once its application has read 'end', confirms it; `Publisher.finish` sends 'end' and
    waits for those confirmations. A linger only proves the bytes left the producer's queue;
    once the producer process is gone, what the kernel still held for a consumer that was not
    reading is lost when that orphaned connection is reset (reproduced: SPEC.md, section 8).
    Control messages ride on the subscription channel as topics no data message
    can match (a message's first frame is a msgpack map: byte 0x80-0x8f or 0xde/0xdf).
Producer binds, consumers connect; libzmq reconnects by itself while a producer restarts.
Sockets are not thread-safe: use each Publisher / Subscriber from one thread.
"""

from __future__ import annotations

import ctypes
import os
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from boardlens.protocol.errors import ProtocolError
from boardlens.protocol.header import DEFAULT_LIMITS, Header
from boardlens.protocol.security import Curve, allow, apply_client, apply_server


def tune_malloc(
    trim_threshold_bytes: int = 128 << 20, mmap_threshold_bytes: int = 32 << 20
) -> bool:
    """Keep glibc from handing large freed message buffers back to the OS; call once at start.

    libzmq mallocs a fresh buffer for every large received message. With glibc's defaults
    the heap is trimmed after frees and the next buffer is page-faulted in again: measured
    here 30-100 minor faults and +70-150 us CPU per 1 MiB message in a consumer, ~1 fault
    with this. Process-wide and optional (same as env MALLOC_TRIM_THRESHOLD_ /
    MALLOC_MMAP_THRESHOLD_); costs up to trim_threshold_bytes of retained free memory.
    32 MiB is glibc's largest mmap threshold. Returns False if mallopt is unavailable/refused.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc symbol in the running process
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_trim_threshold, trim_threshold_bytes)) and bool(
        mallopt(m_mmap_threshold, mmap_threshold_bytes))


_HELLO = b"\xfehello:"  # + name: a lossless Subscriber introduces itself
_END_ACK = b"\xffend:"  # + "<epoch>:<seq>:<name>": it has read that 'end'
_READ = b"\xferead:"  # + "<messages read>:<name>": a lossless Subscriber's progress, about every second
_READ_EVERY_S = 1.0
_MAX_PEERS = 4096  # bound on tracked names and confirmations (hostile subscribers)


def default_name() -> str:
    """This process's subscriber name: host:pid (unique per machine, readable in logs)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class EndReport:
    """Who confirmed an end of stream (`Publisher.finish`)."""

    confirmed: list[str] = field(default_factory=list)
    unconfirmed: list[str] = field(default_factory=list)
    """Subscribed when 'end' was sent, but no confirmation before the timeout or they left."""
    anonymous: int = 0
    """Lossless subscribers that never named themselves (not BoardLens): they cannot confirm."""
    sent: bool = True
    """False when 'end' itself could not be queued before the timeout."""
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.sent and not self.unconfirmed and not self.anonymous


class SendTimeout(Exception):
    """A lossless subscriber stayed full for send_timeout_ms; nothing of the message was sent."""


@dataclass(frozen=True)
class TransportConfig:
    """Socket options; memory per lossless consumer ~ (sndhwm + rcvhwm) * message bytes."""

    sndhwm_msgs: int = 64
    """Messages queued per lossless subscriber in the producer before send blocks."""
    rcvhwm_msgs: int = 64
    """Messages queued in a lossless consumer before it stops reading from TCP."""
    lossy_sndhwm_msgs: int = 4
    """Messages queued per lossy subscriber in the producer before they are dropped."""
    lossy_rcvhwm_msgs: int = 4
    """Messages queued in a lossy consumer (small: it only needs the freshest data)."""
    send_timeout_ms: int = 30000
    """How long a lossless send may block on a full subscriber before SendTimeout."""
    heartbeat_ivl_ms: int = 1000
    """ZMTP PING interval of the lossy publisher (0 disables); see _common_options for why
    lossless connections and subscribers use no ZMTP heartbeats."""
    heartbeat_timeout_ms: int = 5000
    """A lossy subscriber silent this long is disconnected."""
    tcp_keepalive_idle_s: int = 30
    """Every connection: idle seconds before the kernel starts keepalive probes."""
    tcp_keepalive_intvl_s: int = 5
    """Seconds between keepalive probes."""
    tcp_keepalive_cnt: int = 3
    """Unanswered probes before the kernel declares the peer dead (frees a blocked send)."""
    linger_ms: int = 1000
    """How long close() keeps trying to deliver queued messages."""
    max_frame_bytes: int = DEFAULT_LIMITS.max_frame_bytes
    """ZMQ_MAXMSGSIZE of subscribers: a peer sending a larger frame is disconnected before
    libzmq allocates it (the protocol's own limit, so no valid message is refused)."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            low = 1 if "hwm" in name else 0  # hwm 0 means "unbounded" to zmq: not allowed
            if type(value) is not int or value < low:
                raise ValueError(f"TransportConfig.{name} must be an int >= {low}, got {value!r}")
        if self.heartbeat_ivl_ms and self.heartbeat_timeout_ms < self.heartbeat_ivl_ms:
            raise ValueError("heartbeat_timeout_ms must be >= heartbeat_ivl_ms")


DEFAULT_TRANSPORT = TransportConfig()


def _common_options(sock: zmq.Socket, cfg: TransportConfig) -> None:
    """Linger and TCP keepalive on every socket; no ZMTP heartbeats (HEARTBEAT_IVL 0).

    ZMTP heartbeats and backpressure do not mix in libzmq 4.3: a consumer whose receive queue
    is full stops reading TCP, so (a) it cannot see or answer PINGs, and any heartbeat
    timeout, on either side, resets the connection and discards everything queued for it
    (measured: 1 of 40 messages delivered); (b) if the peer closes meanwhile, its own PING
    timer later trips `assert(!_io_error)` in stream_engine_base.cpp and aborts the process
    (reproduced with a stalled SUB). Kernel keepalive probes are answered whatever the
    application does, so they detect dead peers and hosts without either failure. Only the
    lossy publisher, whose subscribers may be dropped, also uses ZMTP heartbeats.
    """
    sock.setsockopt(zmq.LINGER, cfg.linger_ms)
    # IPv6 too: a bind to * is dual-stack and IPv6 addresses can be connected (IPv6-only
    # Kubernetes clusters). libzmq falls back to IPv4 where the host has no IPv6.
    sock.setsockopt(zmq.IPV6, 1)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 0)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, cfg.tcp_keepalive_idle_s)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, cfg.tcp_keepalive_intvl_s)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, cfg.tcp_keepalive_cnt)


class Publisher:
    """Producer side: binds a lossless and/or a lossy XPUB endpoint; `send` goes to both."""

    def __init__(
        self,
        lossless_endpoint: str | None,
        lossy_endpoint: str | None,
        cfg: TransportConfig = DEFAULT_TRANSPORT,
        ctx: zmq.Context | None = None,
        curve: Curve | None = None,
    ) -> None:
        """curve: server keys; then every subscriber must hold an authorised client key."""
        if lossless_endpoint is None and lossy_endpoint is None:
            raise ValueError("Publisher needs at least one endpoint")
        self.cfg = cfg
        self._ctx = ctx if ctx is not None else zmq.Context.instance()
        self._curve = curve
        # ZAP handler before the first bind: without one, a CURVE server accepts any client.
        self.allow_list = allow(self._ctx, curve.authorized) if curve is not None else None
        self._lossless: zmq.Socket | None = None
        self._lossy: zmq.Socket | None = None
        self._subs = {True: 0, False: 0}  # lossless? -> live subscriptions (topic b"")
        self._names: Counter[str] = Counter()  # named lossless subscribers (a name may reconnect)
        self._acks: set[tuple[str, int, str]] = set()  # (epoch, seq, name) of confirmed ends
        self._sent = 0  # lossless messages sent
        self._joined: dict[str, int] = {}  # name -> messages sent when it said hello
        self._reads: dict[str, int] = {}  # name -> messages it last reported read
        self.last_sent = 0.0  # time.monotonic() of the latest send or heartbeat
        self._monitors: list[zmq.Socket] = []  # handshake failures of a CURVE publisher's sockets
        self.handshake_failures = 0  # clients refused before ZAP (no CURVE, a wrong mechanism)
        self.on_handshake_failed = None  # optional callable(), e.g. a Prometheus counter's inc
        try:
            if lossless_endpoint is not None:
                self._lossless = self._bind(lossless_endpoint, lossless=True)
            if lossy_endpoint is not None:
                self._lossy = self._bind(lossy_endpoint, lossless=False)
        except BaseException:
            self.close()
            raise

    def _bind(self, endpoint: str, lossless: bool) -> zmq.Socket:
        cfg = self.cfg
        sock = self._ctx.socket(zmq.XPUB)
        try:
            _common_options(sock, cfg)
            if self._curve is not None:
                apply_server(sock, self._curve)
            sock.setsockopt(zmq.SNDHWM, cfg.sndhwm_msgs if lossless else cfg.lossy_sndhwm_msgs)
            sock.setsockopt(zmq.SNDTIMEO, cfg.send_timeout_ms)
            # VERBOSER: pass up every subscribe AND unsubscribe (also the implicit unsubscribe
            # when a subscriber disconnects), not only the first/last per topic, so that
            # counting them gives the number of live subscribers.
            sock.setsockopt(zmq.XPUB_VERBOSER, 1)
            if lossless:
                # NODROP: a full subscriber queue makes send block (SNDTIMEO) instead of
                # silently dropping the message for that subscriber as PUB/XPUB do.
                sock.setsockopt(zmq.XPUB_NODROP, 1)
            else:
                sock.setsockopt(zmq.HEARTBEAT_IVL, cfg.heartbeat_ivl_ms)
                sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, cfg.heartbeat_timeout_ms)
            if self._curve is not None:
                # A client without CURVE (or speaking another mechanism) fails the handshake
                # before ZAP sees a key: only the socket monitor tells. ZAP counts the rest.
                self._monitors.append(sock.get_monitor_socket(
                    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL))
            sock.bind(endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    def _poll_handshakes(self) -> None:
        for mon in self._monitors:
            while mon.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                mon.recv_multipart(zmq.NOBLOCK)  # event frame + endpoint frame
                self.handshake_failures += 1
                if self.on_handshake_failed is not None:
                    self.on_handshake_failed()

    @property
    def lossless_endpoint(self) -> str | None:
        """Actual bound address (port 0 / '*' resolved), or None."""
        return None if self._lossless is None else self._lossless.getsockopt_string(
            zmq.LAST_ENDPOINT)

    @property
    def lossy_endpoint(self) -> str | None:
        """Actual bound address (port 0 / '*' resolved), or None."""
        return None if self._lossy is None else self._lossy.getsockopt_string(zmq.LAST_ENDPOINT)

    def poll_subscriptions(self) -> None:
        """Read pending (un)subscription messages from both XPUB sockets and update counts
        (and count failed CURVE handshakes)."""
        if self._monitors:
            self._poll_handshakes()
        for lossless, sock in ((True, self._lossless), (False, self._lossy)):
            # EVENTS first: cheaper than a NOBLOCK recv raising zmq.Again on every send.
            if sock is None or not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                continue
            while True:
                try:
                    msg = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_subscription(lossless, msg)

    def _on_subscription(self, lossless: bool, msg: bytes) -> None:
        # b"\x01" + topic = subscribe, b"\x00" + topic = unsubscribe (XPUB_VERBOSER also passes
        # up the implicit unsubscribes of a peer that disconnects). Our Subscriber subscribes
        # to b"" once, so those count peers; the other topics are control messages.
        op, topic = msg[:1], msg[1:]
        delta = {b"\x01": 1, b"\x00": -1}.get(op, 0)
        if not delta:
            return
        if topic == b"":
            self._subs[lossless] = max(0, self._subs[lossless] + delta)
        elif not lossless:
            return
        elif topic.startswith(_HELLO):
            name = topic[len(_HELLO):].decode("utf-8", "replace")
            if delta > 0 and len(self._names) < _MAX_PEERS:
                self._names[name] += 1
                self._joined.setdefault(name, self._sent)
            elif delta < 0 and self._names[name] > 0:
                self._names[name] -= 1
                if not self._names[name]:
                    del self._names[name]
                    self._joined.pop(name, None)
                    self._reads.pop(name, None)
        elif topic.startswith(_READ) and delta > 0:
            count, _, name = topic[len(_READ):].decode("utf-8", "replace").partition(":")
            if count.isdigit() and name in self._names:
                self._reads[name] = int(count)
        elif topic.startswith(_END_ACK) and delta > 0 and len(self._acks) < _MAX_PEERS:
            epoch, seq, name = (topic[len(_END_ACK):].decode("utf-8", "replace").split(":", 2) + ["", ""])[:3]
            if seq.isdigit():
                self._acks.add((epoch, int(seq), name))

    def behind(self) -> dict[str, int]:
        """Named lossless subscribers -> messages sent since they joined that they have not
        reported read (they report about every second while reading), furthest behind first:
        when a send blocks, the first is the one that does not read. Safe from another thread."""
        joined, reads, sent = dict(self._joined), dict(self._reads), self._sent
        lag = {n: max(0, sent - j - reads.get(n, 0)) for n, j in joined.items()}
        return dict(sorted(lag.items(), key=lambda kv: -kv[1]))

    def subscriber_names(self) -> list[str]:
        """Names of the lossless subscribers connected now (polls first)."""
        self.poll_subscriptions()
        return sorted(self._names)

    def subscriber_count(self, lossless: bool = True) -> int:
        """Live subscriptions on one endpoint (polls pending subscription messages first)."""
        self.poll_subscriptions()
        return self._subs[lossless]

    def wait_for_subscribers(self, n: int, timeout_s: float, lossless: bool = True) -> bool:
        """Block until >= n subscribers (lossless endpoint by default); False on timeout.

        A subscription counted here is already active inside libzmq, so every later send
        reaches that subscriber (this closes the slow-joiner race). Polls the socket; no sleeps.
        """
        sock = self._lossless if lossless else self._lossy
        if sock is None:
            raise ValueError(f"no {'lossless' if lossless else 'lossy'} endpoint")
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll_subscriptions()
            if self._subs[lossless] >= n:
                return True
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0:
                return False
            sock.poll(max(1, int(remaining_ms)), zmq.POLLIN)

    def send(self, frames: list[Any]) -> float:
        """Send one multipart message (copy=False) to both endpoints.

        Returns the seconds spent in the lossless send, i.e. blocked on a full subscriber.
        Raises SendTimeout if that exceeded send_timeout_ms (the lossy endpoint is then
        skipped too, so lossy consumers never see a message lossless ones missed). The frame
        buffers must stay unmodified until libzmq has sent them.
        """
        self.poll_subscriptions()
        self.last_sent = time.monotonic()
        blocked_s = 0.0
        if self._lossless is not None:
            t0 = time.perf_counter()
            try:
                self._lossless.send_multipart(frames, copy=False)
            except zmq.Again:
                raise SendTimeout(
                    f"lossless subscriber full for {self.cfg.send_timeout_ms} ms") from None
            blocked_s = time.perf_counter() - t0
            self._sent += 1
        if self._lossy is not None:
            self._lossy.send_multipart(frames, copy=False)  # plain XPUB never blocks
        return blocked_s

    def beat(self, frames: list[Any]) -> bool:
        """Send a heartbeat message `frames` to both endpoints without ever blocking: False when
        a lossless subscriber is full (it has messages to read, so it knows the sender lives)."""
        self.poll_subscriptions()
        self.last_sent = time.monotonic()
        if self._lossless is not None:
            try:
                self._lossless.send_multipart(frames, flags=zmq.NOBLOCK)
            except zmq.Again:
                return False
            self._sent += 1
        if self._lossy is not None:
            self._lossy.send_multipart(frames)
        return True

    def finish(self, frames: list[Any], epoch: str, seq: int, timeout_s: float,
               should_stop=lambda: False) -> EndReport:
        """Send the end-of-stream message `frames` (epoch, seq), then wait until every named
        lossless subscriber connected at that moment has confirmed it, has left, or timeout_s
        (from the call) has passed; `should_stop()` (polled at least every second) cuts the
        wait short. A subscriber confirms only after its application read the 'end', so by
        then it holds every message before it."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        report = EndReport(sent=False)
        while not should_stop() and time.monotonic() < deadline:
            try:
                self.send(frames)
                report.sent = True
                break
            except SendTimeout:
                continue
        self.poll_subscriptions()
        # A fast subscriber may confirm and leave before these events are read: its
        # confirmation counts (it can only follow this send), though its name is gone.
        expected = set(self._names) | {n for (e, s, n) in self._acks if (e, s) == (epoch, seq)}
        report.anonymous = max(0, self._subs[True] - sum(self._names.values()))
        pending = set(expected) if report.sent else set()
        while pending and self._lossless is not None:
            self.poll_subscriptions()
            pending = {n for n in pending if (epoch, seq, n) not in self._acks and n in self._names}
            left = deadline - time.monotonic()
            if not pending or left <= 0 or should_stop():
                break
            self._lossless.poll(max(1, int(min(left, 1.0) * 1000)), zmq.POLLIN)
        confirmed = {n for n in expected if (epoch, seq, n) in self._acks}
        report.confirmed = sorted(confirmed)
        report.unconfirmed = sorted(expected - confirmed)
        report.seconds = time.monotonic() - t0
        return report

    def close(self, linger_ms: int | None = None) -> None:
        """Close both sockets. Idempotent.

        Queued messages keep being delivered for up to `linger_ms` (default cfg.linger_ms)
        in libzmq's I/O thread; only terminating the context waits for that, so a process
        that must deliver everything before exiting calls `ctx.term()` after this.
        """
        linger = self.cfg.linger_ms if linger_ms is None else linger_ms
        for sock in (self._lossless, self._lossy):
            if sock is not None and not sock.closed:
                if self._monitors:
                    sock.disable_monitor()
                sock.close(linger=linger)
        for mon in self._monitors:
            mon.close(linger=0)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


DNS_SCHEME = "dns+tcp://"
"""`dns+tcp://host:port`: connect to every IPv4 address the name resolves to (every IPv6 one if it
has none), re-resolved while running. A Kubernetes headless Service resolves to one address per
ready (or, with publishNotReadyAddresses, every) pod, so consumers reach every producer replica."""


def split_dns_endpoint(endpoint: str) -> tuple[str, int]:
    """`dns+tcp://host:port` (an IPv6 literal in brackets) -> (host, port); ValueError otherwise."""
    host, sep, port = endpoint.removeprefix(DNS_SCHEME).rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not endpoint.startswith(DNS_SCHEME) or not sep or not host or not port.isdigit():
        raise ValueError(f"{endpoint!r}: expected dns+tcp://host:port")
    return host, int(port)


def resolve_endpoint(endpoint: str) -> list[str]:
    """The concrete ZeroMQ endpoints behind one configured endpoint, sorted.

    tcp://, ipc:// and inproc:// endpoints are themselves; `dns+tcp://host:port` is
    `tcp://<ip>:port` for every IPv4 address of host, or `tcp://[<ip6>]:port` for every IPv6
    one when it has no IPv4 address ([] while the name does not resolve, as for a Service with
    no pod yet). One family only: a dual-stack name would otherwise count each producer twice.
    """
    if not endpoint.startswith(DNS_SCHEME):
        return [endpoint]
    host, port = split_dns_endpoint(endpoint)
    for family, form in ((socket.AF_INET, "tcp://{}:{}"), (socket.AF_INET6, "tcp://[{}]:{}")):
        try:
            infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        except socket.gaierror:
            continue
        if infos:
            return sorted({form.format(info[4][0], port) for info in infos})
    return []


class Subscriber:
    """Consumer side: a SUB socket connected to one or more Publisher endpoints, subscribed to all.

    With several endpoints (several producers, or several trainer shards' snapshot endpoints)
    libzmq fair-queues whole messages from all of them; each sender's messages stay in order.
    Tell the senders apart with `source_of(header)` and track them with `Streams`.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
        lossy: bool = False,
        cfg: TransportConfig = DEFAULT_TRANSPORT,
        ctx: zmq.Context | None = None,
        name: str | None = None,
        curve: Curve | None = None,
        rediscover_s: float = 10.0,
    ) -> None:
        """endpoint: one or a list; `dns+tcp://host:port` ones are re-resolved every
        rediscover_s seconds (new addresses connected, vanished ones disconnected).
        name: how the publishers report this subscriber (default host:pid); lossless only.
        curve: client keys and the publishers' public key (needed when they use CURVE)."""
        self.cfg = cfg
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        if not self.endpoints:
            raise ValueError("Subscriber needs at least one endpoint")
        self.endpoint = self.endpoints[0]
        self.lossy = lossy
        self.name = name or default_name()
        self.rediscover_s = rediscover_s
        self.connected: set[str] = set()  # concrete endpoints connected now
        self._next_discovery = float("inf")
        self._read, self._reported, self._report_at = 0, b"", 0.0  # progress reports (lossless)
        ctx = ctx if ctx is not None else zmq.Context.instance()
        self._sock = ctx.socket(zmq.SUB)
        self._rcvtimeo = -1  # mirrors the socket's RCVTIMEO (-1 = wait forever)
        try:
            _common_options(self._sock, cfg)
            self._sock.setsockopt(zmq.MAXMSGSIZE, cfg.max_frame_bytes)
            if curve is not None:
                apply_client(self._sock, curve)
            # For a lossless consumer this bounds its memory: when full it stops reading
            # TCP and the backpressure reaches the producer (which then blocks, not drops).
            self._sock.setsockopt(zmq.RCVHWM, cfg.lossy_rcvhwm_msgs if lossy else cfg.rcvhwm_msgs)
            self._sock.setsockopt(zmq.SUBSCRIBE, b"")
            if not lossy:  # resent by libzmq on every reconnect, so a restarted producer knows us
                self._sock.setsockopt(zmq.SUBSCRIBE, _HELLO + self.name.encode())
            self.discover()
        except BaseException:
            self._sock.close(linger=0)
            raise

    def discover(self) -> None:
        """Connect every endpoint's current addresses; disconnect the ones DNS no longer gives."""
        wanted = {e for spec in self.endpoints for e in resolve_endpoint(spec)}
        for e in sorted(wanted - self.connected):
            self._sock.connect(e)
        for e in sorted(self.connected - wanted):
            self._sock.disconnect(e)
        self.connected = wanted
        dynamic = any(spec.startswith(DNS_SCHEME) for spec in self.endpoints)
        self._next_discovery = time.monotonic() + self.rediscover_s if dynamic else float("inf")

    def recv(self, timeout_ms: int | None = None) -> list[zmq.Frame] | None:
        """Next whole message as zmq.Frames (zero-copy), or None after timeout_ms (None=wait)."""
        if time.monotonic() >= self._next_discovery:
            self.discover()
        # RCVTIMEO instead of poll(): Socket.poll builds a Poller per call (~10 us per
        # message); a sockopt write only when the timeout changes. Parts after the first are
        # already queued (ZeroMQ delivers whole messages), so the timeout applies once.
        timeo = -1 if timeout_ms is None else timeout_ms
        if timeo != self._rcvtimeo:
            self._sock.setsockopt(zmq.RCVTIMEO, timeo)
            self._rcvtimeo = timeo
        try:
            frames = self._sock.recv_multipart(copy=False)
            self._read += 1
        except zmq.Again:
            frames = None
        if not self.lossy and time.monotonic() >= self._report_at:
            self._report_progress()
        return frames

    def pending(self) -> bool:
        """Whether a message is queued, ready to be read now."""
        return bool(self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def _report_progress(self) -> None:
        """Tell the publishers how many messages this subscriber has read (a subscription
        topic: it travels upstream even while the stream is blocked), so that a producer that
        blocks can name the subscriber that does not read."""
        topic = _READ + f"{self._read}:{self.name}".encode()
        if topic != self._reported:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic)
            if self._reported:
                self._sock.setsockopt(zmq.UNSUBSCRIBE, self._reported)
            self._reported = topic
        self._report_at = time.monotonic() + _READ_EVERY_S

    def confirm_end(self, epoch: str, seq: int) -> None:
        """Tell the publisher this subscriber's application has read 'end' (epoch, seq)."""
        if not self.lossy and not self._sock.closed:
            self._sock.setsockopt(zmq.SUBSCRIBE, _END_ACK + f"{epoch}:{seq}:{self.name}".encode())

    def close(self) -> None:
        """Close the socket. Idempotent."""
        if not self._sock.closed:
            self._sock.close(linger=self.cfg.linger_ms)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SeqTracker:
    """Checks the order of one producer stream by (epoch, seq) and counts what it lost.

    `check` says, for each message, how many were lost just before it, or why it must be
    dropped (a reason of protocol.errors.REASONS):
      - out_of_order: a seq not above the last one of the epoch (a replay or duplicate);
      - seq_jump: a gap above max_gap, more than any real stream loses while connected (a
        forged or corrupt seq; counting it as lost would swamp the loss counter);
      - epoch_flap: a message of an epoch this stream already left (a stale producer back);
      - end_epoch: an 'end' that does not belong to the epoch being consumed.
    A new epoch (a producer that started afresh) is adopted and the old one retired; messages
    before the first one seen in an epoch are not counted (the consumer was not there). A
    producer restarted with its state file keeps its epoch and sequence, so what its restart
    lost shows up as an ordinary gap.
    """

    def __init__(self, max_gap: int = 1 << 16, max_retired: int = 256, max_rejected: int = 1024) -> None:
        self.max_gap, self.max_retired, self.max_rejected = max_gap, max_retired, max_rejected
        self.epoch: str | None = None
        self.last_seq = -1
        self.received = 0  # messages observed, rejected ones included
        self.lost_total = 0  # sum of accepted seq gaps
        self.out_of_order = 0  # replays, duplicates or older seqs (never from one ZMQ stream)
        self.epochs_seen = 0
        self._retired: dict[str, None] = {}  # insertion-ordered set, oldest dropped first
        self._rejected: set[int] = set()  # seqs of this epoch above last_seq whose message was rejected

    def verdict(self, epoch: str, seq: int, kind: str = "batch") -> tuple[int, str | None]:
        """What this message would mean, changing nothing but the counts of messages seen:
        (lost just before it, None) or (0, reason to drop it). The consumer then calls
        `accept` once the whole message is accepted, or `reject`; so a message rejected for its
        body (or by the consumer) never moves the stream: a forged new epoch is not adopted."""
        if kind == "heartbeat":  # takes no seq: only a stale epoch is refused
            return (0, "epoch_flap") if self.has_left(epoch) else (0, None)
        self.received += 1
        if epoch != self.epoch:
            if kind == "end":
                return 0, "end_epoch"
            if self.has_left(epoch):
                return 0, "epoch_flap"
            return 0, None
        if seq <= self.last_seq:
            self.out_of_order += 1
            return 0, "out_of_order"
        gap = seq - self.last_seq - 1
        if gap > self.max_gap:
            return 0, "seq_jump"
        return gap - sum(1 for r in self._rejected if r < seq), None

    def accept(self, epoch: str, seq: int, kind: str = "batch") -> int:
        """Commit a message `verdict` passed and the consumer accepted: a new epoch is adopted
        (the old one retired), the seq advances. -> how many were lost just before it. A
        heartbeat moves nothing."""
        if kind == "heartbeat":
            return 0
        if epoch != self.epoch:
            if self.epoch is not None:
                self._retired[self.epoch] = None
                if len(self._retired) > self.max_retired:
                    del self._retired[next(iter(self._retired))]
            self.epoch, self.last_seq, self._rejected = epoch, seq, set()
            self.epochs_seen += 1
            return 0
        lost = seq - self.last_seq - 1 - sum(1 for r in self._rejected if r < seq)
        self.last_seq = seq
        self._rejected = {r for r in self._rejected if r > seq}
        self.lost_total += lost
        return lost

    def has_left(self, epoch: str) -> bool:
        """Whether this stream has left `epoch` for a newer one (a message of it is a flap)."""
        return epoch in self._retired

    def reject(self, epoch: str, seq: int) -> None:
        """A message `verdict` passed was then rejected (its body, or by the consumer): nothing
        moves. A seq of the current epoch is remembered, so that the gap it leaves is counted as
        rejected, not also as lost (a bounded set: a flood of forged seqs only fills it)."""
        if epoch == self.epoch and seq > self.last_seq and len(self._rejected) < self.max_rejected:
            self._rejected.add(seq)

    def check(self, epoch: str, seq: int, kind: str = "batch") -> tuple[int, str | None]:
        """`verdict`, and `accept` when it passes: for readers that accept every message that
        decodes (tests, plain subscribers)."""
        lost, reason = self.verdict(epoch, seq, kind)
        return (self.accept(epoch, seq, kind), None) if reason is None else (0, reason)

    def observe(self, epoch: str, seq: int) -> int:
        """`check` for a batch, returning only the count lost before it (0 when dropped)."""
        return self.check(epoch, seq)[0]


SOURCE_KEY = "src"
"""Meta key naming a message's sender (a producer or a trainer shard): stable across the
sender's restarts, distinct between senders. Absent = '' (a lone sender)."""


def source_of(header: Header) -> str:
    """The sender's name from the header meta (SOURCE_KEY); '' when it names none."""
    src = header.meta.get(SOURCE_KEY, "")
    if not isinstance(src, str):
        raise ProtocolError("header_schema", f"meta {SOURCE_KEY!r} must be a string, got {type(src).__name__}")
    return src


NEVER_HEARD = "never-heard-"
"""Name prefix of the senders `Streams.expire` counts as gone without ever having heard them."""


class Streams:
    """Order, loss and liveness of every sender a consumer hears: one SeqTracker per source.

    A consumer fed by several producers (or an evaluator by several trainer shards) sees their
    epochs interleaved; a single SeqTracker would take each switch for a new stream. Here each
    source (`source_of`) keeps its own (epoch, seq), so a restarted producer is still told from
    a second one, and an 'end' ends only its own source.

    Liveness: every accepted message of a source, heartbeats included (kind 'heartbeat': a
    sender with nothing else to send says it is alive; it takes no seq), marks it heard;
    `expire(timeout_s)` declares the sources silent for longer gone. `finished(n)` is true once
    n sources have each either ended or gone, so a dead sender never holds the consumer.
    """

    def __init__(self, max_sources: int = 1024, max_gap: int = 1 << 16) -> None:
        self.max_sources, self.max_gap = max_sources, max_gap
        self.trackers: dict[str, SeqTracker] = {}
        self.ended: set[str] = set()  # sources whose latest epoch has sent 'end'
        self.heard: dict[str, float] = {}  # source -> time.monotonic() of its last accepted message
        self.gone: set[str] = set()  # sources declared gone by expire() and not heard since
        self._next_expiry = 0.0  # expire_idle looks again from then on

    def verdict(self, source: str, epoch: str, seq: int, kind: str = "batch") -> tuple[int, str | None]:
        """SeqTracker.verdict for the message's source (a source not heard yet: as a fresh stream;
        'limits' once max_sources sources are tracked). Changes nothing; see accept, reject.
        A heartbeat is checked only against the epochs its source has left (epoch_flap)."""
        tracker = self.trackers.get(source)
        if tracker is None:
            full = (source not in self.heard and len(self.heard) >= self.max_sources if kind == "heartbeat"
                    else len(self.trackers) >= self.max_sources)  # a heartbeat opens no tracker
            if full:
                return 0, "limits"
            return SeqTracker(self.max_gap).verdict(epoch, seq, kind)
        return tracker.verdict(epoch, seq, kind)

    def accept(self, source: str, epoch: str, seq: int, kind: str = "batch") -> int:
        """SeqTracker.accept: a source is tracked from its first accepted message on (a heartbeat
        only marks it heard)."""
        self._heard(source)
        if kind == "heartbeat":
            return 0
        tracker = self.trackers.get(source)
        if tracker is None:
            tracker = self.trackers[source] = SeqTracker(self.max_gap)
            tracker.received = 1
        lost = tracker.accept(epoch, seq, kind)
        if kind == "end":
            self.ended.add(source)
        else:  # a source that ended and came back (a new run of that producer) is live again
            self.ended.discard(source)
        return lost

    def _heard(self, source: str) -> None:
        if source in self.heard or len(self.heard) < self.max_sources:
            self.heard[source] = time.monotonic()
        self.gone.discard(source)  # a source declared gone that speaks again is back

    def reject(self, source: str, epoch: str, seq: int) -> None:
        if source in self.trackers:
            self.trackers[source].reject(epoch, seq)

    def check(self, source: str, epoch: str, seq: int, kind: str = "batch") -> tuple[int, str | None]:
        """verdict, then accept when it passes (readers that accept whatever decodes)."""
        lost, reason = self.verdict(source, epoch, seq, kind)
        return (self.accept(source, epoch, seq, kind), None) if reason is None else (0, reason)

    def expire(self, timeout_s: float, now: float | None = None, expected: int = 0) -> list[str]:
        """Declare gone every source heard before, not ended, and silent for more than timeout_s
        (0: never); -> the sources newly gone. One that speaks again is live again.

        expected: the senders connected. Once every source heard has ended or gone and nothing at
        all has come for timeout_s, the ones never heard (dead before their first message) count
        as gone too, under the names NEVER_HEARD + i."""
        if timeout_s <= 0:
            return []
        now = time.monotonic() if now is None else now
        lost = sorted(s for s, t in self.heard.items()
                      if now - t > timeout_s and s not in self.ended and s not in self.gone)
        self.gone.update(lost)
        unheard = expected - len(self.heard)
        if (unheard > 0 and self.heard and now - max(self.heard.values()) > timeout_s
                and set(self.heard) <= self.ended | self.gone):
            never = [f"{NEVER_HEARD}{i}" for i in range(unheard) if f"{NEVER_HEARD}{i}" not in self.gone]
            self.gone.update(never)
            lost += never
        return lost

    def expire_idle(self, sub: Subscriber, timeout_s: float) -> list[str]:
        """`expire` for the senders `sub` connects to, as a consumer's loop calls it: at most about
        once a second, and only with nothing queued on `sub` (a consumer busy elsewhere judges
        silence once it has read what waits, so it never takes its own backlog for a dead sender)."""
        now = time.monotonic()
        if now < self._next_expiry or sub.pending():
            return []
        self._next_expiry = now + 1.0
        return self.expire(timeout_s, now, expected=len(sub.connected))

    def finished(self, expected: int = 1) -> bool:
        """True once at least `expected` sources (the senders connected) have each ended or been
        declared gone: the stream is over (complete only if none is gone).

        A count, not "every source ever heard": a producer pod rescheduled under a new name
        leaves its old source behind, silent, and must not hold the consumer forever."""
        return len(self.ended | self.gone) >= max(1, expected)

    @property
    def complete(self) -> bool:
        """No source is gone (meaningful once `finished`)."""
        return not self.gone

    @property
    def received(self) -> int:
        return sum(t.received for t in self.trackers.values())

    @property
    def lost_total(self) -> int:
        return sum(t.lost_total for t in self.trackers.values())

    @property
    def out_of_order(self) -> int:
        return sum(t.out_of_order for t in self.trackers.values())

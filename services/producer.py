"""Producer: games -> LM forward -> residual activations + board labels -> ZeroMQ.

    boardlens produce --model models/othello-gpt --max-tokens 1000000
    boardlens produce --model models/chess-gpt --source stockfish --label-workers 2

Game generation and labelling for batch i+1 run in a worker thread while the LM forward of
batch i runs (numpy and torch release the GIL); chess games are made and labelled in
`label_workers` processes (python-chess is pure Python), so labelling keeps up with the LM.
Guarantees: lossless subscribers see every batch in order (the producer blocks, up to
send_timeout_ms, rather than drop); lossy subscribers may miss batches. 'end' is sent only
when max_tokens is reached (or a PGN source ends), never on SIGTERM, and the producer then
waits until every lossless subscriber has confirmed reading it (up to drain_timeout_s).

With `state_file`, where the stream stands (epoch, next seq, next game id, batches taken from
the source, tokens) is written before each send, so a restarted producer continues the stream:
same epoch, no game sent twice, max_tokens counted across restarts. Consumers count the
batches that were in flight when it died as an ordinary seq gap. Without it, a restart is a
new stream (new epoch) that replays the same games for the same seed.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from boardlens.atomic import write_json
from boardlens.games.labelled import LabelledGames
from boardlens.games.stream import GameStream
from boardlens.lm.formats import load_any
from boardlens.protocol import (
    ActivationBatch,
    Publisher,
    SendTimeout,
    encode,
    encode_batch,
    new_epoch,
)
from boardlens.protocol.transport import EndReport
from boardlens.registry import GAMES
from boardlens.services import metrics
from boardlens.services.common import (
    StartupError,
    close_context,
    curve,
    keep_alive,
    keep_status,
    log,
    log_config,
    pick_device,
    sender_name,
    set_threads,
    stop_on_signals,
    transport,
)
from boardlens.services.config import ProducerConfig
from boardlens.services.staging import ToHost
from boardlens.services.status import ProducerStatus, stamp
from boardlens.services.telemetry import Telemetry

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ID_SEEDS = 1 << 22  # game id = (seed mod 2**22) << 40 | n: 2**40 games per seed fit an int64


class ProducerMetrics:
    def __init__(self, tel: Telemetry) -> None:
        self.tokens = tel.metric(metrics.PRODUCER_TOKENS)
        self.batches = tel.metric(metrics.PRODUCER_BATCHES)
        self.bytes = tel.metric(metrics.PRODUCER_BYTES)
        self.games = tel.metric(metrics.PRODUCER_GAMES)
        self.forward = tel.metric(metrics.PRODUCER_FORWARD)
        self.labelling = tel.metric(metrics.PRODUCER_LABELLING)
        self.blocked = tel.metric(metrics.PRODUCER_SEND_BLOCKED)
        self.blocked_now = tel.metric(metrics.PRODUCER_SEND_BLOCKED_NOW)
        self.send_timeouts = tel.metric(metrics.PRODUCER_SEND_TIMEOUTS)
        self.subscribers = tel.metric(metrics.PRODUCER_SUBSCRIBERS)
        self.auth_denied = tel.metric(metrics.PRODUCER_AUTH_DENIED)
        self.restarts = tel.metric(metrics.PRODUCER_RESTARTS)


@dataclass
class StreamState:
    """Where the stream stands after the last message handed to the socket (write-ahead)."""

    epoch: str
    stream: dict  # what makes it the same stream: game, model, layer, seed, source, batch_games
    seq: int = 0  # seq of the next message
    next_game_id: int = 0
    batches: int = 0  # game batches taken from the source
    tokens: int = 0  # tokens streamed, all runs together
    restarts: int = 0

    @classmethod
    def load(cls, path: Path, stream: dict) -> StreamState:
        """Read a state file of this stream; ValueError (naming the file) for anything else."""
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            state = cls(**data)
            ints = (state.seq, state.next_game_id, state.batches, state.tokens, state.restarts)
            if (not isinstance(state.epoch, str) or not isinstance(state.stream, dict)
                    or not all(type(v) is int and v >= 0 for v in ints)):
                raise ValueError("fields of the wrong type")
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"producer state file {path} is unusable ({e}); delete it to start "
                             "a new stream") from e
        if state.stream != stream:
            diff = sorted(k for k in {*stream, *state.stream} if stream.get(k) != state.stream.get(k))
            raise ValueError(f"producer state file {path} belongs to another stream (differs in "
                             f"{', '.join(diff)}); delete it or use another state_file")
        return state

    def save(self, path: Path) -> None:
        write_json(path, asdict(self), indent=None)


class Producer:
    """Wires the game source and the LM to a Publisher; `run()` streams until stopped."""

    def __init__(self, cfg: ProducerConfig, tel: Telemetry) -> None:
        self.cfg, self.tel = cfg, tel
        self.device = pick_device(cfg.device)
        self.dtype = _DTYPES[cfg.dtype]
        self.wire_dtype = _DTYPES[cfg.wire_dtype or cfg.dtype]
        self.name = cfg.name or sender_name(cfg.bind)  # meta 'src' of every message
        self.model, meta = load_any(cfg.model, self.device, self.dtype)
        self.game = meta["game"]
        self.layer = cfg.layer if cfg.layer >= 0 else int(meta.get("sae_layer", 0))
        if not 0 <= self.layer < self.model.config.n_layer:
            raise ValueError(f"layer {self.layer} out of range 0..{self.model.config.n_layer - 1}")
        self.model_id = Path(cfg.model).name
        self.batch_games = cfg.batch_games or GAMES[self.game].default_batch_games
        self.state_path = Path(cfg.state_file) if cfg.state_file else None
        identity = {"game": self.game, "model": self.model_id, "layer": self.layer, "seed": cfg.seed,
                    "source": cfg.source, "batch_games": self.batch_games}
        if self.state_path is not None and self.state_path.exists():
            self.state = StreamState.load(self.state_path, identity)
            self.state.restarts += 1
            self.state.save(self.state_path)
            log.info("producer: continuing stream %s from %s: seq %d, game id %d, %d tokens, restart %d",
                     self.state.epoch, self.state_path, self.state.seq, self.state.next_game_id,
                     self.state.tokens, self.state.restarts)
        else:  # game ids start at seed << 40: producers with their own seeds never share an id
            self.state = StreamState(new_epoch(), identity, next_game_id=(cfg.seed % _ID_SEEDS) << 40)
        self.stream = GameStream(self.game, self.batch_games, cfg.seed, cfg.source,
                                 cfg.label_workers, cfg.stockfish, start=self.state.batches)
        self.to_host = ToHost(self.device, self.wire_dtype)
        self.m = ProducerMetrics(tel)
        self.m.restarts.set(self.state.restarts)
        self.pub = Publisher(cfg.bind, cfg.bind_lossy, transport(cfg), curve=curve(cfg, "server"))
        if self.pub.allow_list is not None:
            self.pub.allow_list.on_denied = self.pub.on_handshake_failed = self.m.auth_denied.inc
        self.end_report: EndReport | None = None
        self.sending_since: float | None = None  # monotonic start of the send in progress
        self.m.blocked_now.set_function(self._blocked_s)
        tel.problems.append(self._blocked_problem)

    def status(self, state: str) -> ProducerStatus:
        st = self.state
        return ProducerStatus(**stamp(state), tokens=st.tokens, batches=st.batches, games=st.next_game_id,
                              seq=st.seq)

    def _save_state(self) -> None:
        if self.state_path is not None:
            self.state.save(self.state_path)

    def _games(self) -> LabelledGames | None:
        t0 = time.perf_counter()
        games = self.stream.next()
        self.m.labelling.observe(time.perf_counter() - t0)
        return games

    def _keep_alive(self) -> None:
        """A heartbeat when nothing was sent for idle_heartbeat_s (waiting for subscribers, for
        slow games): consumers declare a producer gone after sender_timeout_s of silence."""
        st = self.state
        keep_alive(self.pub, self.cfg.idle_heartbeat_s, lambda: encode(
            "heartbeat", epoch=st.epoch, seq=st.seq, game=self.game, model=self.model_id, layer=self.layer,
            tensors={}, meta={"src": self.name}))

    def _next_games(self, pending: Future) -> LabelledGames | None:
        """The generator thread's next batch, sending heartbeats while it takes long."""
        while True:
            try:
                return pending.result(timeout=1.0)
            except FutureTimeout:
                self._keep_alive()

    @torch.no_grad()
    def _forward(self, tokens: np.ndarray):
        """(B, T) tokens -> a call giving the (B, T, D) residual after block `layer` on the host,
        in the wire dtype. On CUDA the forward and its copy to pinned memory are only queued:
        the next batch's forward is launched before this call waits (services/staging.py)."""
        t0 = time.perf_counter()
        x = torch.from_numpy(tokens).to(self.device, non_blocking=True)
        _, resid = self.model(x, resid_layers=(self.layer,), stop_after=self.layer)
        staged = self.to_host.start(resid[self.layer])
        launched = time.perf_counter() - t0

        def acts() -> torch.Tensor:  # forward seconds = host time launching it + waiting for it
            t1 = time.perf_counter()
            out = staged()
            self.m.forward.observe(launched + time.perf_counter() - t1)
            return out

        return acts

    def _publish(self, games: LabelledGames, acts: torch.Tensor, stop) -> bool:
        """Encode one batch, advance the stream state, send; False when stopped first."""
        st = self.state
        B = acts.shape[0]
        ids = np.arange(st.next_game_id, st.next_game_id + B, dtype=np.int64)
        batch = ActivationBatch(
            acts=acts, tokens=torch.from_numpy(games.tokens), game_ids=torch.from_numpy(ids),
            lengths=torch.from_numpy(games.lengths), label_pos=torch.from_numpy(games.label_pos),
            labels={k: torch.from_numpy(v) for k, v in games.labels.items()},
            epoch=st.epoch, seq=st.seq, game=self.game, model=self.model_id, layer=self.layer,
            meta={"src": self.name},
        )
        frames = encode_batch(batch)
        n_tok = int(games.lengths.sum())
        before = StreamState(**asdict(st))
        st.seq, st.next_game_id, st.batches, st.tokens = st.seq + 1, st.next_game_id + B, \
            st.batches + 1, st.tokens + n_tok
        self._save_state()  # before the send: a crash after it shows as a gap, never a repeat
        self._update_subscriber_gauges()
        if not self._send(frames, stop):
            self.state = before  # stopped: this batch never left
            self._save_state()
            return False
        self.m.tokens.inc(n_tok)
        self.m.games.inc(B)
        self.m.batches.inc()
        self.m.bytes.inc(sum(memoryview(f).nbytes for f in frames))
        self.tel.progress()
        return True

    def _wait_for_subscribers(self, stop) -> bool:
        """True once they are all there; False if stopped; StartupError after wait_timeout_s."""
        cfg = self.cfg
        deadline = time.monotonic() + cfg.wait_timeout_s
        for n, lossless in ((cfg.wait_consumers, True), (cfg.wait_lossy_consumers, False)):
            while n and not stop.is_set():
                self.tel.idle(f"waiting for {n} {'lossless' if lossless else 'lossy'} subscribers")
                self._keep_alive()  # the consumers already there must not think it gone
                left = deadline - time.monotonic()
                if self.pub.wait_for_subscribers(n, min(1.0, max(left, 0)), lossless=lossless):
                    break
                if left <= 0:
                    # An error, not an empty stream: the consumers it was told to wait for are
                    # missing (exit 1; on Kubernetes the pod restarts and waits again).
                    raise StartupError(
                        f"gave up after {cfg.wait_timeout_s:.0f} s waiting for {n} "
                        f"{'lossless' if lossless else 'lossy'} subscribers (connected: "
                        f"{self.pub.subscriber_count(lossless=lossless)}) on "
                        f"{self.pub.lossless_endpoint if lossless else self.pub.lossy_endpoint}")
        return not stop.is_set()

    def _update_subscriber_gauges(self) -> None:
        self.pub.poll_subscriptions()
        self.m.subscribers.labels("lossless").set(self.pub.subscriber_count(lossless=True))
        self.m.subscribers.labels("lossy").set(self.pub.subscriber_count(lossless=False))

    def _blocked_s(self) -> float:
        since = self.sending_since
        return 0.0 if since is None else time.monotonic() - since

    def _blocked_problem(self) -> str | None:  # runs in the HTTP thread: never touches a socket
        blocked = self._blocked_s()
        if blocked > self.cfg.blocked_unhealthy_s:
            return f"one send blocked for {blocked:.0f} s by a lossless subscriber that does not read ({self._who()})"
        return None

    def _who(self) -> str:
        """The subscriber furthest behind (the one that blocks), and the others."""
        behind = self.pub.behind()
        if not behind:
            return "it is unnamed"
        first, *rest = behind.items()
        return (f"furthest behind: {first[0]}, {first[1]} messages" +
                (f"; others: {', '.join(f'{n} ({b})' for n, b in rest)}" if rest else ""))

    def _send(self, frames: list, stop) -> bool:
        """Send, retrying on SendTimeout until stopped (a lossless consumer must not miss it)."""
        self.sending_since = time.monotonic()
        try:
            return self._send_retrying(frames, stop)
        finally:
            self.sending_since = None

    def _send_retrying(self, frames: list, stop) -> bool:
        while not stop.is_set():
            try:
                blocked = self.pub.send(frames)
                self.m.blocked.observe(blocked)
                return True
            except SendTimeout:
                self.m.send_timeouts.inc()
                self.tel.idle("blocked on a slow lossless subscriber")
                log.warning("send timed out on a slow lossless subscriber (%s); retrying", self._who())
        return False

    def run(self, stop) -> int:
        """Stream until `stop` is set or max_tokens is reached; returns the stream's tokens (all runs)."""
        cfg = self.cfg
        log.info("producer: model %s (%s), layer %d, device %s, source %s, %d games per batch, "
                 "%s on the wire, lossless %s, lossy %s, name %s", cfg.model, self.game, self.layer,
                 self.device, self.stream.source, self.batch_games, str(self.wire_dtype).removeprefix("torch."),
                 self.pub.lossless_endpoint, self.pub.lossy_endpoint, self.name)
        if not self._wait_for_subscribers(stop):
            return 0
        exhausted = False
        # One batch in flight: batch i is sent once the forward of batch i+1 has been launched
        # (on CUDA the two overlap; on the CPU the order is all that changes). A batch still in
        # flight when a signal stops the producer never left: the state does not count it.
        inflight = None  # (games, call giving its activations)
        with ThreadPoolExecutor(1, thread_name_prefix="games") as pool:
            pending = pool.submit(self._games)
            while not stop.is_set():
                queued = self.state.tokens + (int(inflight[0].lengths.sum()) if inflight else 0)
                if cfg.max_tokens and queued >= cfg.max_tokens:
                    break
                games = self._next_games(pending)
                if games is None:
                    exhausted = True
                    break
                pending = pool.submit(self._games)  # overlaps with the forward below
                launched = (games, self._forward(games.tokens))
                if inflight is not None and not self._publish(inflight[0], inflight[1](), stop):
                    inflight = None
                    break
                inflight = launched
            if inflight is not None and not stop.is_set():
                self._publish(inflight[0], inflight[1](), stop)
        st = self.state
        streamed = st.tokens
        if exhausted or (cfg.max_tokens and streamed >= cfg.max_tokens):
            # A producer restarted after its end sends it again (same seq): a consumer that
            # already confirmed it is still subscribed to its confirmation topic.
            end = encode("end", epoch=st.epoch, seq=st.seq, game=self.game, model=self.model_id,
                         layer=self.layer, tensors={}, meta={"tokens": streamed, "src": self.name})
            log.info("producer: %s (%d tokens streamed); sending end of stream and waiting up to "
                     "%.0f s for the lossless subscribers to confirm it",
                     "source exhausted" if exhausted else "reached max_tokens", streamed, cfg.drain_timeout_s)
            self.tel.idle("waiting for subscribers to confirm the end of stream")
            self.end_report = self.pub.finish(end, st.epoch, st.seq, cfg.drain_timeout_s, stop.is_set)
            self._log_end(self.end_report)
        return streamed

    @staticmethod
    def _log_end(r: EndReport) -> None:
        if r.complete:
            log.info("producer: end of stream confirmed by %s after %.1f s", ", ".join(r.confirmed) or "nobody "
                     "(no lossless subscriber)", r.seconds)
            return
        problems = [] if r.sent else ["the end itself could not be queued"]
        if r.unconfirmed:
            problems.append(f"not confirmed by {', '.join(r.unconfirmed)}")
        if r.anonymous:
            problems.append(f"{r.anonymous} unnamed subscriber(s) cannot confirm (not BoardLens consumers)")
        log.error("producer: end of stream after %.1f s: %s; confirmed by %s", r.seconds, "; ".join(problems),
                  ", ".join(r.confirmed) or "nobody")

    def close(self) -> None:
        """Release the game workers and the sockets.

        When every lossless subscriber confirmed the end, nothing is left to deliver. Else
        (stopped by a signal, unconfirmed or unnamed subscribers) what is still queued gets up
        to drain_timeout_s to leave, best effort: a linger only gets bytes into the kernel.
        """
        self.stream.close()
        r = self.end_report
        drain_ms = 0 if r is not None and r.complete else int(self.cfg.drain_timeout_s * 1000)
        if drain_ms:
            log.info("producer: delivering queued batches (up to %.0f s)", self.cfg.drain_timeout_s)
        self.pub.close(linger_ms=drain_ms)
        close_context()  # blocks until delivered or the linger expires


def run(cfg: ProducerConfig) -> int:
    log_config("producer", cfg)
    set_threads(cfg.threads)
    stop = stop_on_signals()
    tel = Telemetry("producer", cfg.metrics_port, cfg.metrics_host, stall_after_s=cfg.health_stall_s)
    try:
        producer = Producer(cfg, tel)
    except (ValueError, StartupError) as e:  # an unusable model, source, layer, state or key: say which
        tel.close()
        raise StartupError(str(e)) from e
    keep_status(tel, cfg.status_dir, producer.status)
    try:
        return producer.run(stop)
    finally:
        producer.close()
        tel.close()
        log.info("producer: stopped")

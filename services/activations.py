"""The producer's stream as a plain Python iterator of activation tensors.

For training with other libraries' trainers (dictionary_learning's `trainSAE`, a SAELens or
sparsify loop, your own):

    from boardlens.services.activations import ActivationStream

    with ActivationStream("tcp://producer:5555", batch_size=4096) as stream:
        for x in stream:            # x: (4096, d) float32 tensors of valid positions
            trainer.update(step, x)

It subscribes like the trainer service does: to the lossless endpoint by default (every
activation, with backpressure on the producer) or the lossy one (`lossy=True`: never slows
the producer, may skip messages; `lost` counts them). With `shuffle_activations` > 0 rows go
through the same shuffle buffer as our trainer (positions of one game are correlated);
otherwise batches are cut in stream order. The iterator ends at the producer's end of stream
of every producer `connect` names (the last full batches are served, a remainder smaller than
batch_size is dropped), after `max_batches`, or after `idle_timeout_s` without data (None: wait
forever). A producer that sends nothing, not even a heartbeat, for `sender_timeout_s` (0:
never) counts as ended and is listed in `gone`: then the stream was incomplete.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import torch

from boardlens.protocol import ProtocolError, Streams, Subscriber
from boardlens.protocol.intake import admit, settle
from boardlens.sae.buffer import ShuffleBuffer


class ActivationStream:
    def __init__(self, connect: str | list[str] = "tcp://127.0.0.1:5555", batch_size: int = 4096, lossy: bool = False,
                 shuffle_activations: int = 0, seed: int = 0, max_batches: int | None = None,
                 idle_timeout_s: float | None = None, sender_timeout_s: float = 300.0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if shuffle_activations and shuffle_activations < 2 * batch_size:
            raise ValueError(f"shuffle_activations must be 0 or >= 2 x batch_size, got {shuffle_activations}")
        self.batch_size, self.shuffle_activations, self.seed = batch_size, shuffle_activations, seed
        self.max_batches, self.idle_timeout_s, self.sender_timeout_s = max_batches, idle_timeout_s, sender_timeout_s
        self.sub = Subscriber(connect, lossy=lossy)
        self.streams = Streams()  # one (epoch, seq) per producer: `connect` may list several
        self.lost = 0  # messages missed (lossy endpoint, or a restarted producer)
        self.rejected = 0  # messages that failed validation (skipped)
        self.gone: list[str] = []  # producers declared gone (silent for sender_timeout_s): the stream is incomplete
        self.source: dict = {}  # game, model, layer of the stream (from its first batch)

    def __enter__(self) -> ActivationStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sub.close()

    def _messages(self) -> Iterator[torch.Tensor]:
        """Valid-position rows (n, d) of each batch message, until end of stream or idle timeout."""
        idle_until = None if self.idle_timeout_s is None else time.monotonic() + self.idle_timeout_s
        while True:
            if self.streams.expire_idle(self.sub, self.sender_timeout_s):  # a producer silent too long
                self.gone = sorted(self.streams.gone)
                if self.streams.finished(len(self.sub.connected)):
                    return
            wait_s = 1.0 if idle_until is None else min(1.0, idle_until - time.monotonic())
            frames = self.sub.recv(max(0, int(wait_s * 1000)))
            if frames is None:
                if idle_until is not None and time.monotonic() >= idle_until:
                    return
                continue
            try:
                admitted = admit(frames, self.streams)  # the services' own intake
            except ProtocolError:
                self.rejected += 1
                continue
            self.lost += settle(self.streams, admitted)
            h = admitted.header
            if h.kind == "heartbeat":  # the producer lives; no data
                continue
            if idle_until is not None:
                idle_until = time.monotonic() + self.idle_timeout_s
            if h.kind == "end":
                self.sub.confirm_end(h.epoch, h.seq)  # the producer waits for this to exit
                if self.streams.finished(len(self.sub.connected)):
                    return
                continue
            if h.kind == "batch":
                batch = admitted.payload
                self.source = {"game": batch.game, "model": batch.model, "layer": batch.layer}
                yield batch.valid_acts().float()

    def __iter__(self) -> Iterator[torch.Tensor]:
        batches = self._shuffled() if self.shuffle_activations else self._in_order()
        return itertools.islice(batches, self.max_batches)

    def _shuffled(self) -> Iterator[torch.Tensor]:
        buf: ShuffleBuffer | None = None
        for rows in self._messages():
            buf = buf or ShuffleBuffer(self.shuffle_activations, rows.shape[1], seed=self.seed)
            while rows.shape[0]:
                rows = rows[buf.push(rows):]
                while buf.ready(self.batch_size):
                    yield buf.pop(self.batch_size)
        while buf is not None and len(buf) >= self.batch_size:  # end of stream: drain
            yield buf.pop(self.batch_size)

    def _in_order(self) -> Iterator[torch.Tensor]:
        carry = torch.empty(0)
        for rows in self._messages():
            pool = torch.cat([carry, rows]) if carry.numel() else rows
            n_full = pool.shape[0] // self.batch_size
            for i in range(n_full):
                yield pool[i * self.batch_size : (i + 1) * self.batch_size]
            carry = pool[n_full * self.batch_size :]

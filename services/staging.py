"""Host<->device copies of activations that overlap with compute (CUDA), plain on the CPU.

    producer:  staged = to_host.start(resid)   # D2H on a side stream, into a pinned buffer
               ... launch the next forward ...
               acts = staged()                 # waits for that copy only
    trainer:   rows = to_device(batch.valid_acts())   # H2D from a pinned buffer, side stream

On a CUDA device a blocking `.cpu()` after each forward leaves the GPU idle while the host
copies, encodes and sends; and a copy from pageable memory is staged by the driver through its
own pinned bounce buffer, synchronously. Here copies go through pinned buffers we reuse, on a
side stream, ordered against the compute stream with events, so the host thread only waits
when it needs the bytes. On the CPU both directions are the identity (plus the dtype cast),
so this path runs, and is tested, everywhere.

A pinned buffer handed to ZeroMQ (`encode` views it, `Publisher.send` is zero-copy) is read by
libzmq's I/O thread after `send` returns: `BufferPool` reuses a buffer only once nothing but
the pool references it (pyzmq drops its reference when libzmq has sent the frame) and its
copy has completed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch


def _shared(buf: torch.Tensor) -> bool:
    """Does anything but the pool hold this buffer or its memory?

    Two counts: Python references to the tensor object (4 = the pool's tuple, the caller's
    variable, this argument, getrefcount's), and references to its storage (2 = the tensor,
    the temporary storage object here), which every view takes, numpy views included (they
    are what `encode` hands to ZeroMQ, held by pyzmq until libzmq has sent the frame).
    """
    return sys.getrefcount(buf) > 4 or torch._C._storage_Use_Count(buf.untyped_storage()._cdata) > 2


class BufferPool:
    """Reusable host buffers of one shape and dtype (pinned when `pin`), at most `limit` live."""

    def __init__(self, pin: bool, limit: int = 256) -> None:
        self.pin, self.limit = pin, limit
        self.buffers: list[tuple[torch.Tensor, object]] = []  # (buffer, its copy's event or None)
        self.allocated = 0  # buffers ever made (a steady pipeline stops allocating)

    def _free_index(self, match: Callable[[torch.Tensor], bool]) -> int | None:
        """Index of the first matching buffer nobody else holds and no copy still uses."""
        for i, (buf, event) in enumerate(self.buffers):
            if match(buf) and not _shared(buf) and (event is None or event.query()):
                return i
        return None

    def take(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """A buffer of this shape and dtype nobody else holds; call `mark(buf, event)` after
        queueing an asynchronous copy into or out of it."""
        i = self._free_index(lambda b: b.shape == shape and b.dtype == dtype)
        if i is not None:
            buf = self.buffers[i][0]
            self.buffers[i] = (buf, None)
            return buf
        if len(self.buffers) >= self.limit:  # shapes that stopped coming: forget a free one
            old = self._free_index(lambda b: True)
            if old is not None:
                del self.buffers[old]
        buf = torch.empty(shape, dtype=dtype, pin_memory=self.pin)
        self.allocated += 1
        self.buffers.append((buf, None))
        return buf

    def mark(self, buf: torch.Tensor, event) -> None:
        """The buffer is in use by an asynchronous copy until `event` completes."""
        for i, (b, _) in enumerate(self.buffers):
            if b is buf:
                self.buffers[i] = (b, event)
                return


class ToHost:
    """Producer side: device activations -> host tensor, overlapped with the next forward."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.pool = BufferPool(pin=self.cuda)

    def start(self, t: torch.Tensor) -> Callable[[], torch.Tensor]:
        """Queue the copy of `t` (cast to the wire dtype); the returned call waits for it and
        gives the host tensor. The caller must not modify `t` in place meanwhile."""
        if not self.cuda:
            out = t.to(self.dtype)  # no copy when the dtype already matches
            return lambda: out
        t = t.to(self.dtype)  # cast on the GPU: half the bytes cross the link for bf16
        buf = self.pool.take(t.shape, self.dtype)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # after the forward wrote t
        with torch.cuda.stream(self.stream):
            buf.copy_(t, non_blocking=True)
            t.record_stream(self.stream)  # t's memory is not reused before the copy read it
            done = torch.cuda.Event()
            done.record(self.stream)
        self.pool.mark(buf, done)

        def result() -> torch.Tensor:
            done.synchronize()
            return buf

        return result


class ToDevice:
    """Trainer side: received host rows -> float32 device tensor, copied on a side stream."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.pool = BufferPool(pin=self.cuda)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """(n, d) rows of any float dtype -> (n, d) float32 on the device. A bfloat16 wire
        crosses the link at half the bytes and is widened on the device."""
        if not self.cuda:
            return rows.float()
        staging = self.pool.take(rows.shape, rows.dtype)
        staging.copy_(rows)  # from the received frame (pageable) into pinned memory
        with torch.cuda.stream(self.stream):
            dev = staging.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        self.pool.mark(staging, done)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(done)  # the GPU waits, the host goes on
        dev.record_stream(compute)
        return dev.float()

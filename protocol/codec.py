"""Encode and decode one wire message: `[header, frame_1, ..., frame_k]`.

The header is a msgpack map (layout below, contract in protocol/SPEC.md); every other frame is
the raw C-contiguous little-endian bytes of one tensor. Encoding is zero-copy (the returned
buffers alias the caller's tensors) and decoding is zero-copy (`torch.frombuffer` over the
received frames), so a 1 MiB batch costs a few tens of microseconds of Python on each side.

Header map, version 1 (short keys keep it ~200 bytes; insertion order is the order below):
    "v": int   protocol version (== PROTOCOL_VERSION)
    "k": str   kind, one of KINDS
    "e": str   producer epoch, 1-64 lowercase hex chars, new on every producer start
    "s": int   sequence number within the epoch, 0 <= s < 2**63
    "t": int   send time, ns since the Unix epoch (time.time_ns()), 0 <= t < 2**63
    "g": str   game name ("othello", ...)
    "m": str   model id
    "l": int   layer index of the residual stream, int64
    "x": map   meta: str -> scalar | [scalar, ...]; scalar = str | int | float | bool | nil
    "d": array tensor descriptors, each [name: str, dtype: str, shape: [int, ...], frame: int]

Untrusted input: `decode` raises only ProtocolError (a ValueError) with a fixed `reason`.
Run:  .venv/bin/python -m pytest -q tests/protocol
"""

from __future__ import annotations

import math
import secrets
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack
import numpy as np
import torch

from protocol.errors import ProtocolError

PROTOCOL_VERSION = 1
KINDS: tuple[str, ...] = ("batch", "snapshot", "end")

if sys.byteorder != "little":  # frames are viewed in place, so the host must match the wire
    raise ImportError("protocol: the wire is little-endian; big-endian hosts are unsupported")

# Wire dtype name -> torch dtype. bfloat16 has no numpy equivalent; torch.frombuffer reads it
# directly and on encode it travels as its uint16 bit pattern (same bytes).
_TORCH: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
DTYPES: tuple[str, ...] = tuple(_TORCH)
ITEMSIZE: dict[str, int] = {name: dt.itemsize for name, dt in _TORCH.items()}
_FROM_TORCH = {dt: name for name, dt in _TORCH.items()}
_FROM_NUMPY = {np.dtype(name): name for name in DTYPES if name != "bfloat16"}

_KEYS = ("v", "k", "e", "s", "t", "g", "m", "l", "x", "d")
_HEX = frozenset("0123456789abcdef")
_I64 = (-(2**63), 2**63)  # half-open range of msgpack/torch int64
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Limits:
    """Bounds applied to untrusted input before any allocation depends on it."""

    max_header_bytes: int = 64 * 1024
    """Largest header frame in bytes; checked before msgpack sees it."""
    max_frames: int = 64
    """Most frames in one message, header included."""
    max_frame_bytes: int = 1 << 30
    """Largest tensor frame in bytes (1 GiB)."""
    max_tensor_dims: int = 6
    """Most dimensions of one tensor."""
    max_meta_items: int = 256
    """Most keys in the meta map, and most elements in one meta list."""
    max_string_bytes: int = 4096
    """Longest string anywhere in the header, UTF-8 bytes."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if type(value) is not int or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class TensorDesc:
    """Where one tensor lives in the message and how to view its bytes."""

    name: str
    dtype: str  # one of DTYPES
    shape: tuple[int, ...]
    frame: int  # index into the multipart message; 1-based because frame 0 is the header

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]


@dataclass(frozen=True)
class Header:
    """The decoded header map (see the module docstring for the wire keys)."""

    version: int
    kind: str
    epoch: str
    seq: int
    sent_ns: int
    game: str
    model: str
    layer: int
    meta: dict[str, Any]
    tensors: tuple[TensorDesc, ...]


class Message(NamedTuple):
    """A decoded message."""

    header: Header
    """The validated header."""
    tensors: dict[str, torch.Tensor]
    """name -> tensor viewing the received frame (zero-copy): treat as read-only, clone to keep
    beyond the frame's life or to write."""


def new_epoch() -> str:
    """A fresh producer epoch id (16 hex chars); call once per producer start."""
    return secrets.token_hex(8)


# --------------------------------------------------------------------------- validation


def _short(x: Any) -> str:
    """repr bounded in length: details may be logged, and the input may be hostile."""
    r = repr(x)
    return r if len(r) <= 80 else r[:77] + "..."


def _string(x: Any, what: str, limits: Limits) -> str:
    if type(x) is not str:
        raise ProtocolError("header_schema", f"{what} must be str, got {_short(x)}")
    try:
        n = len(x.encode())
    except UnicodeEncodeError:  # lone surrogates: msgpack could not pack it either
        raise ProtocolError("header_schema", f"{what} is not valid unicode") from None
    if n > limits.max_string_bytes:
        raise ProtocolError("limits", f"{what} longer than {limits.max_string_bytes} bytes")
    return x


def _int(x: Any, what: str, lo: int = _I64[0], hi: int = _I64[1]) -> int:
    # `type(...) is int` on purpose: bool is an int subclass and must not pass for one.
    if type(x) is not int or not lo <= x < hi:
        raise ProtocolError("header_schema", f"{what} must be int in [{lo}, {hi}), got {_short(x)}")
    return x


def _scalar(x: Any, what: str, limits: Limits) -> Any:
    if type(x) not in _SCALARS:
        raise ProtocolError("header_schema", f"{what} must be a scalar, got {_short(x)}")
    if type(x) is str:
        _string(x, what, limits)
    elif type(x) is int and not -(2**63) <= x < 2**64:  # what msgpack can carry
        raise ProtocolError("header_schema", f"{what} int out of msgpack range")
    return x


def _meta(x: Any, limits: Limits) -> dict[str, Any]:
    if type(x) is not dict:
        raise ProtocolError("header_schema", f"meta must be a map, got {_short(x)}")
    if len(x) > limits.max_meta_items:
        raise ProtocolError("limits", f"meta has more than {limits.max_meta_items} items")
    for key, value in x.items():
        _string(key, "meta key", limits)
        if type(value) is list:
            if len(value) > limits.max_meta_items:
                raise ProtocolError("limits", f"meta[{key!r}] longer than {limits.max_meta_items}")
            for item in value:
                _scalar(item, f"meta[{key!r}] item", limits)
        else:
            _scalar(value, f"meta[{key!r}]", limits)
    return x


def _desc(x: Any, limits: Limits) -> TensorDesc:
    if type(x) is not list or len(x) != 4:
        raise ProtocolError("header_schema", "tensor descriptor must be [name, dtype, shape, "
                            f"frame], got {_short(x)}")
    name, dtype, shape, frame = x
    name = _string(name, "tensor name", limits)
    if not name:
        raise ProtocolError("header_schema", "empty tensor name")
    if type(dtype) is not str or dtype not in _TORCH:
        raise ProtocolError("dtype", f"tensor {name!r}: dtype {_short(dtype)} not in {DTYPES}")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise ProtocolError("shape", f"tensor {name!r}: shape must be a list of ints >= 0, got "
                            f"{_short(shape)}")
    if len(shape) > limits.max_tensor_dims:
        raise ProtocolError("limits", f"tensor {name!r}: more than {limits.max_tensor_dims} dims")
    # Bound every dim, even of an empty tensor: torch computes strides from them and a shape
    # like (0, 2**40, 2**40) would overflow int64 strides instead of failing cleanly.
    if math.prod(max(d, 1) for d in shape) * ITEMSIZE[dtype] > limits.max_frame_bytes:
        raise ProtocolError("limits", f"tensor {name!r}: shape {_short(shape)} exceeds "
                            f"max_frame_bytes={limits.max_frame_bytes}")
    frame = _int(frame, f"tensor {name!r} frame")
    return TensorDesc(name, dtype, tuple(shape), frame)


def header_from_map(obj: Any, limits: Limits = DEFAULT_LIMITS) -> Header:
    """Validate an unpacked header map and build a Header; raises ProtocolError.

    The encoder runs the same check, so it never emits what a decoder would reject.
    """
    if type(obj) is not dict:
        raise ProtocolError("header_schema", f"header must be a map, got {type(obj).__name__}")
    # Version and kind first: a future version may change every other key, and its
    # messages should be counted as "version", not as schema errors.
    version = obj.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError("version", f"version {_short(version)} != {PROTOCOL_VERSION}")
    kind = obj.get("k")
    if type(kind) is not str or kind not in KINDS:
        raise ProtocolError("kind", f"kind {_short(kind)} not in {KINDS}")
    if len(obj) != len(_KEYS) or not all(k in obj for k in _KEYS):
        raise ProtocolError("header_schema", f"header keys {_short(list(obj)[:12])} != {_KEYS}")
    epoch = _string(obj["e"], "epoch", limits)
    if not 1 <= len(epoch) <= 64 or not _HEX.issuperset(epoch):
        raise ProtocolError("header_schema", f"epoch must be 1-64 lowercase hex chars, got "
                            f"{_short(epoch)}")
    descs = obj["d"]
    if type(descs) is not list:
        raise ProtocolError("header_schema", f"tensors must be an array, got {_short(descs)}")
    tensors = tuple(_desc(d, limits) for d in descs)
    if len({d.name for d in tensors}) != len(tensors):
        raise ProtocolError("header_schema", "duplicate tensor names")
    return Header(
        version=version,
        kind=kind,
        epoch=epoch,
        seq=_int(obj["s"], "seq", 0),
        sent_ns=_int(obj["t"], "sent_ns", 0),
        game=_string(obj["g"], "game", limits),
        model=_string(obj["m"], "model", limits),
        layer=_int(obj["l"], "layer"),
        meta=_meta(obj["x"], limits),
        tensors=tensors,
    )


# --------------------------------------------------------------------------- encode


def _to_wire(name: str, t: Any) -> tuple[str, tuple[int, ...], np.ndarray]:
    """-> (wire dtype, shape, 1-D uint8 array aliasing the tensor's bytes)."""
    if isinstance(t, torch.Tensor):
        if t.device.type != "cpu":
            # Plain ValueError: a caller bug, not a wire violation. Moving to host is the
            # caller's decision (it may want pinned memory or a non_blocking copy).
            raise ValueError(f"tensor {name!r} is on {t.device}; call .cpu() before encode")
        if t.layout != torch.strided:
            raise ValueError(f"tensor {name!r} has layout {t.layout}; only strided is supported")
        dtype = _FROM_TORCH.get(t.dtype)
        if dtype is None:
            raise ProtocolError("dtype", f"tensor {name!r}: torch dtype {t.dtype} not allowed")
        t = t.detach().resolve_neg()
        if not t.is_contiguous():
            t = t.contiguous()  # the only copy on the send path, and only when needed
        shape = tuple(t.shape)
        arr = (t.view(torch.uint16) if t.dtype == torch.bfloat16 else t).numpy()
    elif isinstance(t, np.ndarray):
        if t.dtype.byteorder == ">":
            t = t.astype(t.dtype.newbyteorder("<"))
        dtype = _FROM_NUMPY.get(t.dtype)
        if dtype is None:
            raise ProtocolError("dtype", f"tensor {name!r}: numpy dtype {t.dtype} not allowed")
        shape = tuple(t.shape)
        arr = t if t.flags.c_contiguous else np.ascontiguousarray(t)
    else:
        raise TypeError(f"tensor {name!r}: expected torch.Tensor or np.ndarray, got {type(t)}")
    # reshape/view of a C-contiguous array are views: the buffer keeps the tensor alive and
    # pyzmq's copy=False sends straight from its memory.
    return dtype, shape, arr.reshape(-1).view(np.uint8)


def encode(
    kind: str,
    *,
    epoch: str,
    seq: int,
    game: str,
    model: str,
    layer: int,
    tensors: Mapping[str, torch.Tensor | np.ndarray],
    meta: Mapping[str, Any] | None = None,
    sent_ns: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list:
    """-> [header bytes, buf_1, ..., buf_k], ready for `send_multipart(copy=False)`.

    Each buf is a 1-D uint8 numpy array aliasing the tensor's memory (zero-copy unless the
    tensor was non-contiguous or big-endian): do not modify the tensors until the send is
    done. Raises ProtocolError for contract violations (dtype, limits, header values),
    ValueError for a CUDA or sparse tensor, TypeError for a non-tensor.
    """
    descs, bufs = [], []
    for frame, (name, t) in enumerate(tensors.items(), start=1):
        dtype, shape, buf = _to_wire(name, t)
        descs.append([name, dtype, list(shape), frame])
        bufs.append(buf)
    wire_meta = {k: list(v) if type(v) is tuple else v for k, v in (meta or {}).items()}
    wire = {
        "v": PROTOCOL_VERSION,
        "k": kind,
        "e": epoch,
        "s": seq,
        "t": time.time_ns() if sent_ns is None else sent_ns,
        "g": game,
        "m": model,
        "l": layer,
        "x": wire_meta,
        "d": descs,
    }
    header_from_map(wire, limits)
    if 1 + len(bufs) > limits.max_frames:
        raise ProtocolError("frame_count", f"{1 + len(bufs)} frames > {limits.max_frames}")
    for d, buf in zip(descs, bufs, strict=True):
        if buf.nbytes > limits.max_frame_bytes:
            raise ProtocolError("limits", f"tensor {d[0]!r}: {buf.nbytes} bytes > max_frame_bytes")
    head = msgpack.packb(wire, use_bin_type=True)
    if len(head) > limits.max_header_bytes:
        raise ProtocolError("header_size", f"{len(head)} bytes > {limits.max_header_bytes}")
    return [head, *bufs]


# --------------------------------------------------------------------------- decode


def _byte_view(frame: Any, index: int) -> memoryview:
    """A flat byte memoryview of a zmq.Frame (`.buffer`), bytes, memoryview or buffer object."""
    try:
        view = memoryview(getattr(frame, "buffer", frame))
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")  # fails (-> ProtocolError) unless C-contiguous
        return view
    except Exception as e:  # any object can arrive here; never leak its exception type
        raise ProtocolError("frame_size", f"frame {index} is not a contiguous buffer: "
                            f"{type(e).__name__}") from None


def _tensor(view: memoryview, d: TensorDesc) -> torch.Tensor:
    dtype = _TORCH[d.dtype]
    if view.nbytes == 0:
        return torch.empty(d.shape, dtype=dtype)  # frombuffer rejects empty buffers
    if view.readonly:
        # bytes input (tests, files): torch warns that writes would be undefined behaviour.
        # Received zmq frames are writable, so the hot path skips catch_warnings (which is
        # also not thread-safe before Python 3.14). Callers must treat the result as read-only.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            flat = torch.frombuffer(view, dtype=dtype)
    else:
        flat = torch.frombuffer(view, dtype=dtype)
    if dtype == torch.bool and bool((flat.view(torch.uint8) > 1).any()):
        # torch assumes bool bytes are 0/1; other values make comparisons inconsistent.
        raise ProtocolError("dtype", f"tensor {d.name!r}: bool frame holds bytes other than 0/1")
    return flat.view(d.shape)


def decode(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Validate and view a received multipart message; raises only ProtocolError.

    `frames`: zmq.Frame objects (recv_multipart(copy=False)), bytes or memoryviews. The
    returned tensors alias the frames (zero-copy; see Message.tensors).
    """
    try:
        frames = list(frames)
    except Exception:
        raise ProtocolError("frame_count", "frames is not a sequence") from None
    if not 1 <= len(frames) <= limits.max_frames:
        raise ProtocolError("frame_count", f"{len(frames)} frames, want 1..{limits.max_frames}")
    views = [_byte_view(f, i) for i, f in enumerate(frames)]
    if views[0].nbytes > limits.max_header_bytes:
        raise ProtocolError("header_size", f"{views[0].nbytes} bytes > {limits.max_header_bytes}")
    n_items = max(limits.max_frames, limits.max_meta_items, limits.max_tensor_dims, 4)
    try:
        obj = msgpack.unpackb(
            views[0],
            raw=False,
            use_list=True,
            strict_map_key=True,
            timestamp=0,
            max_str_len=limits.max_string_bytes,
            max_bin_len=limits.max_string_bytes,  # no bin in v1; schema rejects any that pass
            max_array_len=n_items,
            max_map_len=max(n_items, len(_KEYS)),
            max_ext_len=limits.max_string_bytes,  # ext values then fail the schema
        )
    except Exception as e:  # ValueError, StackError, ExtraData, UnicodeDecodeError, ...
        reason = "limits" if "exceeds max_" in str(e) else "header_decode"
        raise ProtocolError(reason, f"{type(e).__name__}: {_short(str(e))}") from None
    header = header_from_map(obj, limits)

    if len(header.tensors) != len(frames) - 1:
        raise ProtocolError("frame_count", f"{len(header.tensors)} descriptors for "
                            f"{len(frames) - 1} tensor frames")
    used = {d.frame for d in header.tensors}
    if len(used) != len(header.tensors) or not used <= set(range(1, len(frames))):
        raise ProtocolError("frame_count", "tensor frame indices are not a permutation of 1..k")
    tensors = {}
    for d in header.tensors:
        view = views[d.frame]
        if view.nbytes > limits.max_frame_bytes:
            raise ProtocolError("limits", f"frame {d.frame}: {view.nbytes} bytes > max_frame_bytes")
        if view.nbytes != d.nbytes:
            raise ProtocolError("frame_size", f"tensor {d.name!r}: frame has {view.nbytes} bytes, "
                                f"{d.dtype}{list(d.shape)} needs {d.nbytes}")
        tensors[d.name] = _tensor(view, d)
    return Message(header, tensors)

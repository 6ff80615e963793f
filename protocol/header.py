"""The header of a wire message: schema, limits and validation (no torch, no zmq).

Header map, version 1 (msgpack, short keys keep it ~200 bytes; packed in this order):
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
Every check raises ProtocolError with a fixed reason (see protocol/SPEC.md).
"""

from __future__ import annotations

import math
import reprlib
import secrets
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from boardlens.protocol.errors import ProtocolError

PROTOCOL_VERSION = 1
KINDS: tuple[str, ...] = ("batch", "snapshot", "end", "heartbeat")
# Wire dtype name -> bytes per element. Little-endian only.
ITEMSIZE: dict[str, int] = {
    "float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1,
    "int16": 2, "int32": 4, "int64": 8, "bool": 1,
}
DTYPES: tuple[str, ...] = tuple(ITEMSIZE)

KEYS = ("v", "k", "e", "s", "t", "g", "m", "l", "x", "d")
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


class TensorDesc(NamedTuple):
    """Where one tensor lives in the message and how to view its bytes.

    A NamedTuple, not a frozen dataclass: built 2x per tensor per message, and frozen
    dataclass construction costs ~0.7 us against ~0.2 us.
    """

    name: str
    """Unique within the message."""
    dtype: str
    """One of DTYPES."""
    shape: tuple[int, ...]
    """Non-negative dims, at most Limits.max_tensor_dims of them."""
    frame: int
    """Index into the multipart message; 1-based because frame 0 is the header."""

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


def new_epoch() -> str:
    """A fresh producer epoch id (16 hex chars); call once per producer start."""
    return secrets.token_hex(8)


# --------------------------------------------------------------------------- validation


def _short(x: Any) -> str:
    """repr bounded in size and depth: the input may be hostile (msgpack allows ~1000 levels
    of nesting, deeper than repr's recursion limit) and details end up in logs."""
    return reprlib.repr(x)


def _string(x: Any, what: str, limits: Limits) -> str:
    if type(x) is not str:
        raise ProtocolError("header_schema", f"{what} must be str, got {_short(x)}")
    # A char is at most 4 UTF-8 bytes: only long strings need the exact (costlier) count.
    if len(x) * 4 > limits.max_string_bytes:
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


def _scalar(x: Any, key: str, limits: Limits) -> None:
    if type(x) not in _SCALARS:
        raise ProtocolError("header_schema", f"meta[{_short(key)}] holds a non-scalar {_short(x)}")
    if type(x) is str:
        _string(x, "meta value", limits)
    elif type(x) is int and not -(2**63) <= x < 2**64:  # what msgpack can carry
        raise ProtocolError("header_schema", f"meta[{_short(key)}] int out of msgpack range")


def _meta(x: Any, limits: Limits) -> dict[str, Any]:
    if type(x) is not dict:
        raise ProtocolError("header_schema", f"meta must be a map, got {_short(x)}")
    if len(x) > limits.max_meta_items:
        raise ProtocolError("limits", f"meta has more than {limits.max_meta_items} items")
    for key, value in x.items():
        _string(key, "meta key", limits)
        if type(value) is list:
            if len(value) > limits.max_meta_items:
                raise ProtocolError("limits", f"meta[{_short(key)}] longer than "
                                    f"{limits.max_meta_items}")
            for item in value:
                _scalar(item, key, limits)
        else:
            _scalar(value, key, limits)
    return x


def _desc(x: Any, limits: Limits) -> TensorDesc:
    if type(x) is not list or len(x) != 4:
        raise ProtocolError("header_schema", "tensor descriptor must be [name, dtype, shape, "
                            f"frame], got {_short(x)}")
    name, dtype, shape, frame = x
    name = _string(name, "tensor name", limits)
    if not name:
        raise ProtocolError("header_schema", "empty tensor name")
    if type(dtype) is not str or dtype not in ITEMSIZE:
        raise ProtocolError("dtype", f"tensor {_short(name)}: dtype {_short(dtype)} not in "
                            f"{DTYPES}")
    if type(shape) is not list:
        raise ProtocolError("shape", f"tensor {_short(name)}: shape must be a list, got "
                            f"{_short(shape)}")
    if len(shape) > limits.max_tensor_dims:
        raise ProtocolError("limits", f"tensor {_short(name)}: more than "
                            f"{limits.max_tensor_dims} dims")
    # Bound every dim, even of an empty tensor: torch computes strides from them and a shape
    # like (0, 2**40, 2**40) would overflow int64 strides instead of failing cleanly.
    bound = ITEMSIZE[dtype]
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise ProtocolError("shape", f"tensor {_short(name)}: shape must be ints >= 0, got "
                                f"{_short(shape)}")
        bound *= dim or 1
    if bound > limits.max_frame_bytes:
        raise ProtocolError("limits", f"tensor {_short(name)}: shape {_short(shape)} exceeds "
                            f"max_frame_bytes={limits.max_frame_bytes}")
    if type(frame) is not int:  # its range is checked against the frames in decode
        raise ProtocolError("header_schema", f"tensor {_short(name)}: frame must be int, got "
                            f"{_short(frame)}")
    return TensorDesc(name, dtype, tuple(shape), frame)


_DESC_CACHE: dict[tuple[Limits, bytes], tuple[TensorDesc, ...]] = {}
_DESC_CACHE_SIZE = 64


def _descriptors(descs: list, limits: Limits) -> tuple[TensorDesc, ...]:
    """The validated descriptors, memoised by their exact msgpack bytes.

    A stream repeats one tensor layout message after message, so each layout is validated once
    (~2 us to re-pack 6 descriptors against ~10 us to check them). The key is exact: re-packing
    keeps every type apart (a bool packs as 0xc2/0xc3, never as an int; a bin never as a str),
    so nothing is accepted that the checks would refuse. Bounded: emptied when full.
    """
    try:
        key = (limits, msgpack.packb(descs, use_bin_type=True))
    except (TypeError, ValueError, OverflowError):  # not packable: the checks say why
        key = None
    cached = _DESC_CACHE.get(key) if key is not None else None
    if cached is not None:
        return cached
    tensors = tuple(_desc(d, limits) for d in descs)
    if len({d.name for d in tensors}) != len(tensors):
        raise ProtocolError("header_schema", "duplicate tensor names")
    if key is not None:
        if len(_DESC_CACHE) >= _DESC_CACHE_SIZE:
            _DESC_CACHE.clear()
        _DESC_CACHE[key] = tensors
    return tensors


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
    if len(obj) != len(KEYS) or not all(k in obj for k in KEYS):
        raise ProtocolError("header_schema", f"header keys {_short(list(obj)[:12])} != {KEYS}")
    epoch = _string(obj["e"], "epoch", limits)
    if not 1 <= len(epoch) <= 64 or not _HEX.issuperset(epoch):
        raise ProtocolError("header_schema", f"epoch must be 1-64 lowercase hex chars, got "
                            f"{_short(epoch)}")
    descs = obj["d"]
    if type(descs) is not list:
        raise ProtocolError("header_schema", f"tensors must be an array, got {_short(descs)}")
    tensors = _descriptors(descs, limits)
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

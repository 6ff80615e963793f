"""Hypothesis fuzz: decode / decode_batch raise nothing but ProtocolError on any input."""

import math

import msgpack
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boardlens.protocol import (
    DEFAULT_LIMITS,
    DTYPES,
    KINDS,
    Limits,
    ProtocolError,
    decode,
    decode_batch,
    encode,
)

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SMALL = Limits(max_header_bytes=4096, max_frames=8, max_frame_bytes=4096, max_tensor_dims=4,
               max_meta_items=8, max_string_bytes=64)

# Anything msgpack can pack: the decoder must survive every such header.
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
           | st.text(max_size=12) | st.binary(max_size=12))
packable = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=4) | st.integers(0, 3), children, max_size=5),
    max_leaves=20,
)
# The same with string keys only (int keys are rejected by msgpack's strict_map_key at once).
packable_s = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=4), children, max_size=5),
    max_leaves=20,
)


def mostly(valid):
    """valid values 9 times out of 10, else any msgpack value: reaches the deeper checks."""
    return st.integers(0, 9).flatmap(lambda r: packable_s if r == 0 else valid)


core = ["acts", "tokens", "game_ids", "lengths", "label_pos", "label/board", "label/x", "z"]
shapes = st.lists(st.integers(0, 4) | st.sampled_from([-1, 2**40, True, 1.0]), max_size=5)
descriptor = st.tuples(mostly(st.sampled_from(core)), mostly(st.sampled_from(DTYPES)),
                       mostly(shapes), mostly(st.integers(-1, 7))).map(list)
header_map = st.fixed_dictionaries(
    {"v": mostly(st.just(1)), "k": mostly(st.sampled_from(KINDS)),
     "e": mostly(st.sampled_from(["ab", "0"])), "s": mostly(st.integers(-2, 3)),
     "t": mostly(st.integers(0, 3)), "g": mostly(st.just("othello")), "m": mostly(st.just("m")),
     "l": mostly(st.integers(-1, 3)),
     "x": mostly(st.dictionaries(st.text(max_size=3), scalars | st.lists(scalars, max_size=3),
                                 max_size=3)),
     "d": mostly(st.lists(descriptor, max_size=6))},
)


ITEMSIZE = {name: getattr(torch, name).itemsize for name in DTYPES}


def fitting_size(desc) -> int:
    """Bytes a (possibly garbage) descriptor asks for, or 3 when it makes no sense."""
    try:
        n = math.prod(desc[2]) * ITEMSIZE[desc[1]]
    except Exception:
        return 3
    return n if type(n) is int and 0 <= n <= 4096 else 3


def check(frames, limits=DEFAULT_LIMITS):
    """decode (and decode_batch when decode succeeds) may only raise ProtocolError."""
    try:
        msg = decode(frames, limits)
    except ProtocolError:
        return None
    try:
        decode_batch(msg)
    except ProtocolError:
        pass
    return msg


@SETTINGS
@given(st.lists(st.binary(max_size=64), max_size=10))
def test_arbitrary_byte_frames(frames):
    check(frames)
    check(frames, SMALL)


@SETTINGS
@given(packable, st.lists(st.binary(max_size=64), max_size=4))
def test_arbitrary_msgpack_header(value, tensor_frames):
    check([msgpack.packb(value, use_bin_type=True), *tensor_frames])


@SETTINGS
@given(header_map, st.data())
def test_random_header_maps_with_fitting_frames(header, data):
    """Frames sized to the descriptors where possible, so tensors and batches get built."""
    frames = [msgpack.packb(header, use_bin_type=True)]
    descs = header["d"] if isinstance(header["d"], list) else []
    for d in descs[:6]:
        size = fitting_size(d)
        frames.append(data.draw(st.binary(min_size=size, max_size=size) | st.just(bytes(size))))
    for limits in (Limits(), SMALL):
        check(frames, limits)


def valid_batch_frames(b, t, d, p):
    tensors = {
        "acts": torch.randn(b, t, d),
        "tokens": torch.zeros(b, t, dtype=torch.int64),
        "game_ids": torch.arange(b),
        "lengths": torch.full((b,), t, dtype=torch.int16),
        "label_pos": torch.zeros(b, p, dtype=torch.int16),
        "label/board": torch.zeros(b, p, 2, 2, dtype=torch.int8),
    }
    frames = encode("batch", epoch="ab", seq=1, game="g", model="m", layer=0, tensors=tensors)
    return [bytes(f) for f in frames]


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(0, 3), st.data())
def test_mutated_valid_batches(b, t, d, p, data):
    frames = valid_batch_frames(b, t, d, p)
    assert check(frames) is not None  # the unmutated message is valid
    op = data.draw(st.sampled_from(["truncate", "swap", "drop", "flip", "header", "append"]))
    i = data.draw(st.integers(0, len(frames) - 1))
    if op == "truncate":
        frames[i] = frames[i][: data.draw(st.integers(0, max(0, len(frames[i]) - 1)))]
    elif op == "swap":
        j = data.draw(st.integers(0, len(frames) - 1))
        frames[i], frames[j] = frames[j], frames[i]
    elif op == "drop":
        del frames[i]
    elif op == "flip":
        f = bytearray(frames[i])
        if f:
            k = data.draw(st.integers(0, len(f) - 1))
            f[k] ^= data.draw(st.integers(1, 255))
        frames[i] = bytes(f)
    elif op == "header":
        frames[0] = msgpack.packb(data.draw(header_map), use_bin_type=True)
    else:
        frames.append(data.draw(st.binary(max_size=16)))
    check(frames)


@SETTINGS
@given(st.data())
def test_random_batch_tensor_shapes(data):
    """Well-formed messages with batch tensor names but arbitrary dtypes and shapes."""
    tensors = {}
    for name in data.draw(st.lists(st.sampled_from(core), min_size=1, max_size=7, unique=True)):
        shape = data.draw(st.lists(st.integers(0, 3), max_size=4))
        dtype = getattr(torch, data.draw(st.sampled_from(DTYPES)))
        tensors[name] = torch.zeros(shape, dtype=dtype)
    frames = encode("batch", epoch="ab", seq=0, game="g", model="m", layer=0, tensors=tensors)
    assert check(frames) is not None

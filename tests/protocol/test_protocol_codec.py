"""protocol.codec: round trips, golden bytes, one test per error reason, import hygiene."""

import ast
import pathlib
import subprocess
import sys
import warnings

import msgpack
import numpy as np
import pytest
import torch

from boardlens.protocol import (
    DEFAULT_LIMITS,
    DTYPES,
    PROTOCOL_VERSION,
    REASONS,
    Limits,
    ProtocolError,
    decode,
    encode,
    new_epoch,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}

# The header of the SPEC.md example, checked in: any change to the wire layout fails here.
def _spec_block(tag: str) -> str:
    return (ROOT / "protocol" / "SPEC.md").read_text().split(f"```{tag}\n")[1].split("```")[0]


def golden_frames():
    """SPEC.md's golden batch, made by our encoder."""
    import torch

    from boardlens.protocol import ActivationBatch, encode_batch

    labels = torch.zeros(1, 1, 8, 8, dtype=torch.int8)
    labels[0, 0, 2, 3] = labels[0, 0, 4, 5] = 1
    return encode_batch(ActivationBatch(
        acts=torch.tensor([[[0.5, -1.0], [2.0, 0.25]]]), tokens=torch.tensor([[20, 38]]), game_ids=torch.tensor([7]),
        lengths=torch.tensor([2], dtype=torch.int16), label_pos=torch.tensor([[1]], dtype=torch.int16),
        labels={"legal_moves": labels}, epoch="0123456789abcdef", seq=7, game="othello", model="othello-gpt",
        layer=6, sent_ns=1_700_000_000_000_000_000, meta={"src": "p0"}))


def golden_end():
    return encode("end", epoch="0123456789abcdef", seq=8, game="othello", model="othello-gpt", layer=6,
                  tensors={}, meta={"src": "p0", "tokens": 2}, sent_ns=1_700_000_001_000_000_000)


GOLDEN_HEADER = bytes.fromhex("".join(_spec_block("golden").split()))


def wire_map(**changes):
    """A valid header map for one float32 (2, 3) tensor in frame 1, with keys replaced."""
    m = {"v": 1, "k": "batch", "e": "ab", "s": 0, "t": 0, "g": "othello", "m": "m", "l": 0,
         "x": {}, "d": [["a", "float32", [2, 3], 1]]}
    m.update(changes)
    return m


def frames_of(header_map, *tensor_frames):
    if not tensor_frames:
        tensor_frames = (bytes(24),)
    return [msgpack.packb(header_map, use_bin_type=True), *tensor_frames]


def reason_of(frames, limits=DEFAULT_LIMITS):
    with pytest.raises(ProtocolError) as info:
        decode(frames, limits)
    return info.value.reason


def sample(name, shape):
    """Deterministic non-trivial values of a wire dtype, as a torch tensor."""
    n = int(np.prod(shape))
    if name == "bool":
        return (torch.arange(n) % 3 == 0).reshape(shape)
    vals = torch.arange(n, dtype=torch.float64) * 0.5 - 3
    if TORCH_DTYPES[name].is_floating_point:
        return vals.to(TORCH_DTYPES[name]).reshape(shape)
    return (torch.arange(n) % 100 - (0 if name == "uint8" else 50)).to(
        TORCH_DTYPES[name]).reshape(shape)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5), (0,), (2, 0, 3), (), (1, 2, 1, 2, 1, 2)])
@pytest.mark.parametrize("as_numpy", [False, True])
def test_round_trip_every_dtype(name, shape, as_numpy):
    if as_numpy and name == "bfloat16":
        pytest.skip("numpy has no bfloat16")
    t = sample(name, shape)
    frames = encode("snapshot", epoch="ab", seq=3, game="g", model="m", layer=1,
                    tensors={"x": t.numpy() if as_numpy else t})
    msg = decode([bytes(f) for f in frames])
    out = msg.tensors["x"]
    assert out.dtype == t.dtype and tuple(out.shape) == shape
    assert torch.equal(out, t)
    assert msg.header.tensors[0].dtype == name


def test_encode_is_zero_copy_and_decode_views_frames():
    t = torch.randn(4, 8)
    frames = encode("batch", epoch="ab", seq=0, game="g", model="m", layer=0, tensors={"t": t})
    assert frames[1].ctypes.data == t.data_ptr()  # the send buffer aliases the tensor
    buf = bytearray(frames[1].tobytes())
    out = decode([frames[0], buf]).tensors["t"]
    assert out.data_ptr() == np.frombuffer(buf, np.uint8).ctypes.data


def test_misaligned_frames_are_copied_to_aligned_memory():
    frames = encode("batch", epoch="ab", seq=0, game="g", model="m", layer=0,
                    tensors={"f": torch.arange(6.0, dtype=torch.float64)})
    shifted = memoryview(bytearray(1) + bytes(frames[1]))[1:]  # starts at an odd address
    out = decode([frames[0], shifted]).tensors["f"]
    assert out.data_ptr() % 8 == 0 and out.tolist() == list(range(6))


def test_encode_copies_only_what_it_must():
    t = torch.arange(12.0).reshape(3, 4)
    be = np.arange(6, dtype=">i4").reshape(2, 3)
    frames = encode("batch", epoch="ab", seq=0, game="g", model="m", layer=0,
                    tensors={"nc": t.T, "be": be, "grad": torch.ones(2, requires_grad=True)})
    msg = decode([bytes(f) for f in frames])
    assert torch.equal(msg.tensors["nc"], t.T)
    assert torch.equal(msg.tensors["be"], torch.arange(6, dtype=torch.int32).reshape(2, 3))
    assert msg.header.tensors[1].dtype == "int32"


def test_header_fields_round_trip():
    meta = {"split": "test", "n": 3, "f": 0.25, "ok": True, "none": None, "xs": (1, "a", None)}
    frames = encode("end", epoch="deadbeef", seq=2**63 - 1, game="chess", model="m1", layer=-1,
                    tensors={}, meta=meta, sent_ns=123)
    h = decode(frames).header
    assert (h.version, h.kind, h.epoch, h.seq, h.sent_ns) == (1, "end", "deadbeef", 2**63 - 1, 123)
    assert (h.game, h.model, h.layer, h.tensors) == ("chess", "m1", -1, ())
    assert h.meta == {**meta, "xs": [1, "a", None]}


def test_decode_accepts_memoryviews_and_bytearrays_without_warnings():
    frames = golden_frames()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decode([memoryview(frames[0]), *(memoryview(bytearray(bytes(f))) for f in frames[1:])])
        decode([bytes(f) for f in frames])  # read-only: the torch warning is suppressed


def test_new_epoch_is_fresh_hex():
    a, b = new_epoch(), new_epoch()
    assert a != b and len(a) == 16 and int(a, 16) >= 0


# --------------------------------------------------------------------------- golden bytes


def test_the_encoder_makes_spec_md_s_golden_messages_byte_for_byte():
    frames = golden_frames()
    assert bytes(frames[0]) == GOLDEN_HEADER and len(GOLDEN_HEADER) == 210
    spec_frames = dict(line.split(": ") for line in _spec_block("golden-frames").strip().splitlines())
    assert {int(i): bytes.fromhex(h) for i, h in spec_frames.items()} == {
        i: bytes(f) for i, f in enumerate(frames) if i}
    end = golden_end()
    assert len(end) == 1 and bytes(end[0]) == bytes.fromhex("".join(_spec_block("golden-end").split()))
    assert PROTOCOL_VERSION == 1


def test_spec_md_s_golden_messages_are_valid_messages_of_their_kind():
    from boardlens.protocol import decode_batch

    batch = decode_batch(decode([bytes(f) for f in golden_frames()]))
    assert batch.acts.tolist() == [[[0.5, -1.0], [2.0, 0.25]]] and batch.labels["legal_moves"].sum() == 2
    end = decode(golden_end()).header
    assert (end.kind, end.seq, end.meta) == ("end", 8, {"src": "p0", "tokens": 2})


# --------------------------------------------------------------------------- error reasons


def test_reason_tokens_are_fixed():
    assert REASONS == ("frame_count", "header_size", "header_decode", "header_schema", "version",
                       "kind", "dtype", "shape", "frame_size", "limits", "batch_schema", "non_finite",
                       "snapshot_schema", "out_of_order", "seq_jump", "epoch_flap", "end_epoch")
    err = ProtocolError("dtype", "boom")
    assert str(err) == "dtype: boom" and isinstance(err, ValueError)
    with pytest.raises(ValueError):
        ProtocolError("no_such_reason", "x")
    import pickle

    assert pickle.loads(pickle.dumps(err)).reason == "dtype"


@pytest.mark.parametrize("frames", [
    [],
    [b"x"] * 65,
    frames_of(wire_map()) + [b""],  # a frame no descriptor uses
    frames_of(wire_map())[:1],  # a descriptor without its frame
    frames_of(wire_map(d=[["a", "float32", [2, 3], 2]])),  # index out of range
    frames_of(wire_map(d=[["a", "int8", [1], 1], ["b", "int8", [1], 1]]), b"x", b"y"),
], ids=["empty", "too_many", "extra_frame", "missing_frame", "bad_index", "reused_index"])
def test_frame_count(frames):
    assert reason_of(frames) == "frame_count"


def test_frames_not_a_sequence():
    assert reason_of(None) == "frame_count"


def test_header_size_checked_before_unpacking():
    big = msgpack.packb(wire_map(x={"pad": "y" * 4000, **{f"k{i}": "z" * 4000 for i in range(20)}}))
    assert len(big) > 64 * 1024
    assert reason_of([big, bytes(24)]) == "header_size"
    assert reason_of([b"\xc1" * 101], Limits(max_header_bytes=100)) == "header_size"


@pytest.mark.parametrize("head", [
    b"", b"\xc1", msgpack.packb(wire_map())[:-3], msgpack.packb(wire_map()) + b"\x00",
    b"\xa2\xff\xfe", b"\x91" * 5000 + b"\x00", b"\x81\x01\x02", b"\xd6\xff\x00\x00",
], ids=["empty", "reserved", "truncated", "trailing", "bad_utf8", "deep", "int_key", "bad_ext"])
def test_header_decode(head):
    assert reason_of([head, bytes(24)]) == "header_decode"


def test_ext_types_decode_but_fail_the_schema():
    stamp = b"\xd6\xff\x00\x00\x00\x01"  # msgpack timestamp ext
    assert reason_of([stamp]) == "header_schema"
    assert reason_of(frames_of(wire_map(x={"a": msgpack.ExtType(5, b"xy")}))) == "header_schema"


@pytest.mark.parametrize("change", [
    {"s": True}, {"s": -1}, {"s": 2**63}, {"t": 1.5}, {"l": "3"}, {"e": "XYZ"}, {"e": ""},
    {"e": "a" * 65}, {"g": b"othello"}, {"m": None}, {"x": []}, {"x": {"a": {"b": 1}}},
    {"x": {"a": [[1]]}}, {"d": {}}, {"d": [["a", "float32", [2, 3]]]},
    {"d": [["", "float32", [2, 3], 1]]}, {"d": [["a", "float32", [2, 3], True]]},
    {"d": [["a", "float32", [2, 3], 1], ["a", "float32", [2, 3], 2]]}, {"zz": 1},
])
def test_header_schema(change):
    assert reason_of(frames_of(wire_map(**change))) == "header_schema"


@pytest.mark.parametrize("key", ["v", "k", "e", "s", "x", "d"])
def test_deeply_nested_values_fail_cleanly(key):
    deep = 0
    for _ in range(1000):  # msgpack accepts this depth; repr() alone would hit RecursionError
        deep = [deep]
    with pytest.raises(ProtocolError):
        decode(frames_of(wire_map(**{key: deep})))
    with pytest.raises(ProtocolError):
        decode(frames_of(wire_map(x={"a": deep}, d=[["a", "float32", deep, 1]])))


def test_header_schema_missing_key_and_not_a_map():
    m = wire_map()
    del m["g"]
    assert reason_of(frames_of(m)) == "header_schema"
    assert reason_of([msgpack.packb([1, 2]), bytes(24)]) == "header_schema"


@pytest.mark.parametrize("v", [2, 0, True, "1", None])
def test_version(v):
    assert reason_of(frames_of(wire_map(v=v))) == "version"
    m = wire_map()
    del m["v"]
    assert reason_of(frames_of(m)) == "version"


@pytest.mark.parametrize("k", ["nope", "", 1, None])
def test_kind(k):
    assert reason_of(frames_of(wire_map(k=k))) == "kind"


@pytest.mark.parametrize("dtype", ["complex64", "float", "<f4", "uint16", 5, None])
def test_dtype(dtype):
    assert reason_of(frames_of(wire_map(d=[["a", dtype, [2, 3], 1]]))) == "dtype"


def test_bool_frame_must_hold_0_or_1():
    good = frames_of(wire_map(d=[["a", "bool", [3], 1]]), b"\x00\x01\x01")
    assert decode(good).tensors["a"].tolist() == [False, True, True]
    assert reason_of(frames_of(wire_map(d=[["a", "bool", [3], 1]]), b"\x00\x02\x01")) == "dtype"


@pytest.mark.parametrize("shape", [[-1, 3], [2.0, 3], [True, 3], "23", None, [[2], 3]])
def test_shape(shape):
    assert reason_of(frames_of(wire_map(d=[["a", "float32", shape, 1]]))) == "shape"


@pytest.mark.parametrize("frame", [bytes(23), bytes(25), b""])
def test_frame_size(frame):
    assert reason_of(frames_of(wire_map(), frame)) == "frame_size"


def test_frame_not_a_buffer():
    assert reason_of([msgpack.packb(wire_map()), 12345]) == "frame_size"
    noncontig = np.zeros((4, 6), np.uint8)[:, ::2]
    assert reason_of([msgpack.packb(wire_map()), noncontig]) == "frame_size"


@pytest.mark.parametrize("change,limits", [
    ({"d": [["a", "uint8", [1] * 7, 1]]}, Limits()),
    ({"d": [["a", "uint8", [0, 2**40, 2**40], 1]]}, Limits()),
    ({"g": "x" * 5000}, Limits()),
    ({"x": {f"k{i}": i for i in range(257)}}, Limits()),
    ({"x": {"k": list(range(257))}}, Limits()),
    ({"x": {"k": "é" * 3000}}, Limits()),
    ({}, Limits(max_frame_bytes=16)),
])
def test_limits(change, limits):
    m = wire_map(**change)
    tensor = bytes(1) if m["d"][0][1] == "uint8" else bytes(24)
    assert reason_of(frames_of(m, tensor), limits) == "limits"


def test_limits_validation():
    with pytest.raises(ValueError):
        Limits(max_frames=0)
    with pytest.raises(ValueError):
        Limits(max_header_bytes=True)


# --------------------------------------------------------------------------- encode errors


def test_encode_rejects_what_decode_would():
    kw = dict(epoch="ab", seq=0, game="g", model="m", layer=0)
    with pytest.raises(ValueError, match="cpu"):  # plain ValueError: a caller bug
        encode("batch", tensors={"a": torch.zeros(2, device="meta")}, **kw)
    with pytest.raises(TypeError):
        encode("batch", tensors={"a": [1, 2]}, **kw)
    cases = [
        ("dtype", dict(tensors={"a": torch.zeros(2, dtype=torch.complex64)})),
        ("dtype", dict(tensors={"a": np.zeros(2, np.uint16)})),
        ("kind", dict(kind="nope", tensors={})),
        ("header_schema", dict(tensors={}, epoch="not hex")),
        ("header_schema", dict(tensors={}, seq=-1)),
        ("header_schema", dict(tensors={}, meta={"a": np.float32(1)})),
        ("header_schema", dict(tensors={}, meta={"a": 2**64})),
        ("header_schema", dict(tensors={}, game="\ud800")),
        ("limits", dict(tensors={"a": torch.zeros([1] * 7)})),
        ("limits", dict(tensors={"a": torch.zeros(5)}, limits=Limits(max_frame_bytes=16))),
        ("frame_count", dict(tensors={f"t{i}": torch.zeros(1) for i in range(64)})),
        ("header_size", dict(tensors={}, meta={"a": "b" * 100}, limits=Limits(
            max_header_bytes=100))),
    ]
    for reason, change in cases:
        args = {**kw, "kind": "batch", **change}
        kind = args.pop("kind")
        with pytest.raises(ProtocolError) as info:
            encode(kind, **args)
        assert info.value.reason == reason, change


# --------------------------------------------------------------------------- import hygiene


def test_codec_and_batch_do_not_import_zmq():
    code = ("import sys, boardlens.protocol, boardlens.protocol.codec, boardlens.protocol.batch, "
            "boardlens.protocol.snapshot; "
            "assert 'zmq' not in sys.modules, 'zmq imported'; boardlens.protocol.Publisher; "
            "assert 'zmq' in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_header_and_transport_do_not_import_torch():
    code = ("import sys, boardlens.protocol.header, boardlens.protocol.transport; "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_boardlens_does_not_import_protocol():
    for path in (ROOT / "boardlens").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            assert not any(n.startswith(("boardlens.protocol", "boardlens.services", "protocol", "services")) for n in names), path


def test_lazy_package_exports_everything_it_lists():
    import boardlens.protocol as protocol

    assert sorted(protocol.__all__) == sorted(protocol._EXPORTS)
    for name in protocol.__all__:
        assert getattr(protocol, name) is not None
    with pytest.raises(AttributeError):
        protocol.no_such_name  # noqa: B018


def test_installed_only_under_the_project_namespace(tmp_path):
    """protocol/ and services/ import as boardlens.protocol / boardlens.services; the generic
    top-level names are not installed (run outside the checkout, so its folder is not on the path)."""
    code = ("import importlib.util as u, boardlens.protocol, boardlens.services; "
            "assert u.find_spec('protocol') is None and u.find_spec('services') is None")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=60)


def test_every_package_folder_is_installed():
    """pyproject lists the packages explicitly (protocol/ and services/ map under boardlens.):
    a new subpackage missing there would be absent from wheels and images."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in (("boardlens", "boardlens"), ("protocol", "boardlens.protocol"), ("services", "boardlens.services")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    assert found == listed, (sorted(found - listed), sorted(listed - found))


def test_the_descriptor_memo_is_exact():
    """A layout validated once is memoised by its msgpack bytes: a bool where an int is wanted,
    or a bin where a str is, never matches the memo of the valid layout."""
    good = [["a", "float32", [2, 3], 1]]
    assert decode(frames_of(wire_map(d=good))).tensors["a"].shape == (2, 3)  # memoised now
    for bad in ([["a", "float32", [2, 3], True]], [["a", "float32", [True, 3], 1]],
                [[b"a", "float32", [2, 3], 1]], [["a", b"float32", [2, 3], 1]]):
        assert reason_of(frames_of(wire_map(d=bad))) in ("header_schema", "shape", "dtype")
    assert decode(frames_of(wire_map(d=good))).tensors["a"].shape == (2, 3)

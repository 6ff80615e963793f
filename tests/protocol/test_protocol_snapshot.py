"""protocol.snapshot: SaeSnapshot round trip and one test per snapshot_schema rejection."""

import json

import numpy as np
import pytest
import torch

from boardlens.protocol import (
    ProtocolError,
    SaeSnapshot,
    decode,
    decode_snapshot,
    encode,
    encode_snapshot,
    validate_sae_name,
)
from boardlens.protocol.snapshot import MAX_TENSORS

D, DICT = 8, 32


def relu_tensors(dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"encoder.weight": torch.randn(DICT, D, generator=g).to(dtype),
            "encoder.bias": torch.randn(DICT, generator=g).to(dtype),
            "decoder.weight": torch.randn(D, DICT, generator=g).to(dtype),
            "bias": torch.randn(D, generator=g).to(dtype)}


def make_snapshot(**changes) -> SaeSnapshot:
    fields = dict(name="standard-32-0.05", step=1200, arch="relu", tensors=relu_tensors(),
                  hyperparams={"kind": "standard", "lr": 3e-4, "d_in": D, "d_sae": DICT},
                  epoch="c0ffee", seq=9, game="othello", model="othello-gpt-8l", layer=5,
                  sent_ns=99, meta={"note": "extra keys pass through"})
    fields.update(changes)
    return SaeSnapshot(**fields)


def round_trip(snap: SaeSnapshot, **kw) -> SaeSnapshot:
    return decode_snapshot(decode([bytes(f) for f in encode_snapshot(snap)]), **kw)


def raw_snapshot(tensors=None, **meta_changes) -> list[bytes]:
    """A snapshot message built with the bare codec, so decode_snapshot sees what a buggy or
    hostile sender could put on the wire (encode_snapshot would refuse it)."""
    meta = {"sae": "s", "step": 1, "arch": "relu", "hyperparams": "{}", **meta_changes}
    meta = {k: v for k, v in meta.items() if v is not None}
    frames = encode("snapshot", epoch="ab", seq=0, game="g", model="m", layer=0,
                    tensors=relu_tensors() if tensors is None else tensors, meta=meta)
    return [bytes(f) for f in frames]


def reject(frames, **kw) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_snapshot(decode(frames), **kw)
    assert info.value.reason == "snapshot_schema"
    return info.value


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_round_trip(dtype):
    snap = make_snapshot(tensors={**relu_tensors(dtype), "k": torch.tensor(4, dtype=torch.int32)})
    out = round_trip(snap)
    assert out.tensors.keys() == snap.tensors.keys()
    for name, t in snap.tensors.items():
        assert out.tensors[name].dtype == t.dtype and torch.equal(out.tensors[name], t), name
    assert (out.name, out.step, out.arch, out.hyperparams, out.epoch, out.seq, out.game,
            out.model, out.layer, out.sent_ns, out.meta) == (
        "standard-32-0.05", 1200, "relu", snap.hyperparams, "c0ffee", 9, "othello",
        "othello-gpt-8l", 5, 99, {"note": "extra keys pass through"})


def test_wire_meta_is_what_the_spec_lists():
    msg = decode([bytes(f) for f in encode_snapshot(make_snapshot())])
    assert msg.header.kind == "snapshot"
    meta = msg.header.meta
    assert (meta["sae"], meta["step"], meta["arch"]) == ("standard-32-0.05", 1200, "relu")
    assert json.loads(meta["hyperparams"]) == make_snapshot().hyperparams


def test_names_of_every_default_sweep_name_are_valid():
    for name in ("standard-4096-0.05", "p_anneal-4096-0.02-lr1e-05", "topk-8192-k32",
                 "gated_anneal-4096-0.05-p_end0.5", "a", "x" * 200, "batch_topk", "s+1=2"):
        assert validate_sae_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 201, "has space", "a/b", "../up", ".hidden",
                                  "-flag", "line\nbreak", "tab\t", "ünï", 7, None, b"bytes"])
def test_bad_name(name):
    with pytest.raises(ProtocolError) as info:
        encode_snapshot(make_snapshot(name=name))
    assert info.value.reason == "snapshot_schema"
    reject(raw_snapshot(sae=name if type(name) in (str, int) else "a b"))


@pytest.mark.parametrize("step", [-1, -(2**63)])
def test_negative_step(step):
    with pytest.raises(ProtocolError, match="step"):
        encode_snapshot(make_snapshot(step=step))
    reject(raw_snapshot(step=step))


def test_step_out_of_int64_range():
    reject(raw_snapshot(step=2**63))


@pytest.mark.parametrize("meta", [dict(step=True), dict(step=1.0), dict(step="3"),
                                  dict(arch=3), dict(arch=""), dict(arch="re lu"),
                                  dict(sae=["a"]), dict(hyperparams=3),
                                  dict(hyperparams="[1, 2]"), dict(hyperparams="{not json"),
                                  dict(hyperparams="[" * 2000 + "]" * 2000)])
def test_wrong_meta_types(meta):
    reject(raw_snapshot(**meta))


@pytest.mark.parametrize("key", ["sae", "step", "arch", "hyperparams"])
def test_missing_meta_key(key):
    assert key in str(reject(raw_snapshot(**{key: None})))


def test_wrong_types_on_encode():
    for changes in (dict(step=True), dict(arch=None), dict(hyperparams="{}"),
                    dict(tensors={"w": np.zeros(3, np.float32)}), dict(tensors=[torch.zeros(3)]),
                    dict(hyperparams={"f": object()}), dict(meta={"step": 3})):
        with pytest.raises(ProtocolError) as info:
            encode_snapshot(make_snapshot(**changes))
        assert info.value.reason == "snapshot_schema", changes


def test_missing_tensors():
    reject(raw_snapshot(tensors={}))
    with pytest.raises(ProtocolError, match="tensors"):
        encode_snapshot(make_snapshot(tensors={}))


@pytest.mark.parametrize("tensor", [
    torch.zeros(2, 2, dtype=torch.int8),  # not a weight dtype
    torch.zeros(3, dtype=torch.bool),
    torch.zeros(2, 2, 2),  # more than 2 dims
    torch.zeros(0, 4),  # no element
])
def test_wrong_tensor_dtype_or_shape(tensor):
    reject(raw_snapshot(tensors={**relu_tensors(), "extra": tensor}))
    with pytest.raises(ProtocolError):
        encode_snapshot(make_snapshot(tensors={**relu_tensors(), "extra": tensor}))


def test_bad_tensor_name():
    reject(raw_snapshot(tensors={**relu_tensors(), "a b": torch.zeros(1)}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights(dtype, bad):
    tensors = relu_tensors(dtype)
    tensors["decoder.weight"][3, 5] = bad
    assert "decoder.weight" in str(reject(raw_snapshot(tensors=tensors)))


def test_non_finite_is_a_receiver_check():
    """The trainer must not stop over one snapshot: encode sends it, evaluators reject it."""
    tensors = relu_tensors()
    tensors["bias"][0] = float("nan")
    encode_snapshot(make_snapshot(tensors=tensors))


def test_oversized():
    total = sum(t.numel() * 4 for t in relu_tensors().values())
    assert round_trip(make_snapshot(), max_bytes=total).name == "standard-32-0.05"
    assert "bytes" in str(reject(raw_snapshot(), max_bytes=total - 1))
    many = {f"t{i}": torch.zeros(1) for i in range(MAX_TENSORS + 1)}
    reject(raw_snapshot(tensors=many))


def test_wrong_kind():
    frames = encode("batch", epoch="ab", seq=0, game="g", model="m", layer=0,
                    tensors=relu_tensors(), meta={"sae": "s", "step": 1, "arch": "relu",
                                                  "hyperparams": "{}"})
    reject(frames)

"""protocol.batch: ActivationBatch round trip and batch_schema errors."""

import pytest
import torch

from boardlens.protocol import (
    ActivationBatch,
    ProtocolError,
    decode,
    decode_batch,
    encode,
    encode_batch,
)

B, T, D, P = 3, 7, 16, 4


def make_batch(act_dtype=torch.float32, **changes) -> ActivationBatch:
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([7, 5, 0], dtype=torch.int16)
    label_pos = torch.tensor([[0, 3, 6, -1], [1, 4, -1, -1], [-1, -1, -1, -1]], dtype=torch.int16)
    fields = dict(
        acts=torch.randn(B, T, D, generator=g).to(act_dtype),
        tokens=torch.randint(0, 61, (B, T), generator=g),
        game_ids=torch.tensor([10, 11, 2**40]),
        lengths=lengths,
        label_pos=label_pos,
        labels={
            "board": torch.randint(0, 3, (B, P, 8, 8), generator=g, dtype=torch.int8),
            "player": torch.randint(0, 2, (B, P, 1, 1), generator=g, dtype=torch.int8),
        },
        epoch="c0ffee", seq=41, game="othello", model="othello-gpt-8l", layer=5, sent_ns=99,
        meta={"split": "train"},
    )
    fields.update(changes)
    return ActivationBatch(**fields)


def round_trip(batch: ActivationBatch) -> ActivationBatch:
    return decode_batch(decode([bytes(f) for f in encode_batch(batch)]))


@pytest.mark.parametrize("act_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip(act_dtype):
    batch = make_batch(act_dtype)
    out = round_trip(batch)
    for name in ("acts", "tokens", "game_ids", "lengths", "label_pos"):
        assert torch.equal(getattr(out, name), getattr(batch, name)), name
        assert getattr(out, name).dtype == getattr(batch, name).dtype
    assert out.labels.keys() == batch.labels.keys()
    for fam in batch.labels:
        assert torch.equal(out.labels[fam], batch.labels[fam])
    assert (out.epoch, out.seq, out.game, out.model, out.layer, out.sent_ns, out.meta) == (
        "c0ffee", 41, "othello", "othello-gpt-8l", 5, 99, {"split": "train"})
    assert out.n_tokens == 12


def test_empty_batch_and_no_labels_round_trip():
    batch = make_batch(acts=torch.zeros(0, T, D), tokens=torch.zeros(0, T, dtype=torch.int64),
                       game_ids=torch.zeros(0, dtype=torch.int64),
                       lengths=torch.zeros(0, dtype=torch.int16),
                       label_pos=torch.zeros(0, 0, dtype=torch.int16), labels={})
    out = round_trip(batch)
    assert out.acts.shape == (0, T, D) and out.labels == {} and out.n_tokens == 0


def test_sent_ns_defaults_to_now():
    import time

    before = time.time_ns()
    assert round_trip(make_batch(sent_ns=None)).sent_ns >= before


BAD = {
    "acts_int": dict(acts=torch.zeros(B, T, D, dtype=torch.int32)),
    "acts_2d": dict(acts=torch.zeros(B, T)),
    "tokens_dtype": dict(tokens=torch.zeros(B, T, dtype=torch.int32)),
    "tokens_shape": dict(tokens=torch.zeros(B, T + 1, dtype=torch.int64)),
    "game_ids_B": dict(game_ids=torch.zeros(B + 1, dtype=torch.int64)),
    "lengths_dtype": dict(lengths=torch.tensor([7, 5, 0], dtype=torch.int32)),
    "lengths_range": dict(lengths=torch.tensor([8, 5, 0], dtype=torch.int16)),
    "lengths_negative": dict(lengths=torch.tensor([7, -1, 0], dtype=torch.int16)),
    "label_pos_1d": dict(label_pos=torch.zeros(B, dtype=torch.int16)),
    "label_pos_B": dict(label_pos=torch.zeros(B + 1, P, dtype=torch.int16)),
    "label_pos_padding": dict(label_pos=torch.full((B, P), 5, dtype=torch.int16)),
    "label_pos_below": dict(label_pos=torch.full((B, P), -2, dtype=torch.int16)),
    "label_dtype": dict(labels={"board": torch.zeros(B, P, 8, 8, dtype=torch.int64)}),
    "label_P": dict(labels={"board": torch.zeros(B, P + 1, 8, 8, dtype=torch.int8)}),
    "label_R9": dict(labels={"board": torch.zeros(B, P, 9, 8, dtype=torch.int8)}),
    "label_C0": dict(labels={"board": torch.zeros(B, P, 8, 0, dtype=torch.int8)}),
    "label_3d": dict(labels={"board": torch.zeros(B, P, 64, dtype=torch.int8)}),
    "family_empty": dict(labels={"": torch.zeros(B, P, 1, 1, dtype=torch.int8)}),
    "not_tensor": dict(lengths=[7, 5, 0]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_batch_schema_errors_on_both_sides(name):
    batch = make_batch(**BAD[name])
    with pytest.raises(ProtocolError) as info:
        encode_batch(batch)
    assert info.value.reason == "batch_schema"
    if name == "not_tensor":
        return
    # The same batch forced onto the wire through the generic encoder: the consumer rejects it.
    tensors = {n: getattr(batch, n) for n in ("acts", "tokens", "game_ids", "lengths",
                                              "label_pos")}
    tensors.update({f"label/{f}": v for f, v in batch.labels.items()})
    frames = encode("batch", epoch="ab", seq=0, game="g", model="m", layer=0, tensors=tensors)
    with pytest.raises(ProtocolError) as info:
        decode_batch(decode(frames))
    assert info.value.reason == "batch_schema"


@pytest.mark.parametrize("tensors,kind", [
    ({"acts": torch.zeros(1, 1, 1)}, "batch"),  # missing tensors
    ({"acts": torch.zeros(1, 1, 1), "tokens": torch.zeros(1, 1, dtype=torch.int64),
      "game_ids": torch.zeros(1, dtype=torch.int64), "lengths": torch.ones(1, dtype=torch.int16),
      "label_pos": torch.zeros(1, 1, dtype=torch.int16), "extra": torch.zeros(1)}, "batch"),
    ({"acts": torch.zeros(1, 1, 1), "tokens": torch.zeros(1, 1, dtype=torch.int64),
      "game_ids": torch.zeros(1, dtype=torch.int64), "lengths": torch.ones(1, dtype=torch.int16),
      "label_pos": torch.zeros(1, 1, dtype=torch.int16), "label/": torch.zeros(1)}, "batch"),
    ({}, "snapshot"),
])
def test_decode_batch_rejects_wrong_names_and_kind(tensors, kind):
    frames = encode(kind, epoch="ab", seq=0, game="g", model="m", layer=0, tensors=tensors)
    with pytest.raises(ProtocolError) as info:
        decode_batch(decode(frames))
    assert info.value.reason == "batch_schema"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_activations_are_rejected(dtype, poison):
    ok = make_batch(dtype)
    decode_batch(decode(encode_batch(ok)))  # finite: accepted (max and min of the type too)
    ok.acts[0, 0, 0], ok.acts[0, 0, 1] = torch.finfo(dtype).max, torch.finfo(dtype).min
    decode_batch(decode(encode_batch(ok)))
    ok.acts[1, 2, 0] = poison
    with pytest.raises(ProtocolError) as e:
        decode_batch(decode(encode_batch(ok)))
    assert e.value.reason == "non_finite"


def test_a_known_layout_still_has_its_values_checked():
    """Dtype and shape checks are memoised per layout; index ranges are checked on every batch."""
    round_trip(make_batch())  # the layout is known from here on
    for bad in (dict(lengths=torch.tensor([7, 9, 0], dtype=torch.int16)),  # 9 > T
                dict(label_pos=torch.tensor([[0, 3, 7, -1], [1, 4, -1, -1], [-1] * 4], dtype=torch.int16))):
        with pytest.raises(ProtocolError, match="batch_schema"):
            encode_batch(make_batch(**bad))


def _values_ok(t: int, lengths: list[int], label_pos: list[list[int]]) -> bool:
    """The index-range rule, spelled out plainly."""
    return (all(0 <= n <= t for n in lengths)
            and all(p == -1 or 0 <= p < lengths[b] for b, row in enumerate(label_pos) for p in row))


EDGE_LENGTHS = (-32768, -1, 0, 1, T - 1, T, T + 1, 32767)
EDGE_POS = (-32768, -2, -1, 0, 1, T - 2, T - 1, T, 32766, 32767)


@pytest.mark.parametrize("length", EDGE_LENGTHS)
def test_index_checks_agree_with_the_plain_rule_at_every_int16_edge(length):
    """The checks read int16 as uint16 to test both ends at once; at the edges of int16 that
    must still say exactly what the plain rule says, on both sides of the wire."""
    for pos in EDGE_POS:
        lengths, label_pos = [length, 3, 0], [[pos, -1, -1, -1], [2, -1, -1, -1], [-1] * 4]
        batch = make_batch(lengths=torch.tensor(lengths, dtype=torch.int16),
                           label_pos=torch.tensor(label_pos, dtype=torch.int16))
        tensors = {n: getattr(batch, n) for n in ("acts", "tokens", "game_ids", "lengths",
                                                  "label_pos")}
        tensors.update({f"label/{f}": v for f, v in batch.labels.items()})
        unchecked = encode("batch", epoch="ab", seq=0, game="g", model="m", layer=0,
                           tensors=tensors)
        if _values_ok(T, lengths, label_pos):
            encode_batch(batch)
            decode_batch(decode(unchecked))
            continue
        with pytest.raises(ProtocolError, match="batch_schema"):
            encode_batch(batch)
        with pytest.raises(ProtocolError, match="batch_schema"):
            decode_batch(decode(unchecked))  # a known layout by now: the values alone decide

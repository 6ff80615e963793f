"""The SAE snapshot schema carried by kind="snapshot" messages (trainer -> evaluators).

One message per SAE of the sweep, every `snapshot_every` steps and once at the end. The
header's game, model and layer name the stream the SAE was trained on; epoch and seq are the
trainer's own snapshot stream. Meta keys (all required; others pass through in `meta`):
    "sae"          str  the SAE's stable sweep name, e.g. "standard-4096-0.05" (a NAME)
    "step"         int  optimiser steps this SAE has taken, 0 <= step < 2**63
    "arch"         str  architecture, e.g. "relu", "gated", "topk", "batch_topk" (a NAME)
    "hyperparams"  str  a JSON object: the trainer's settings (kind, lr, d_in, d_sae, ...)
NAME: 1-200 chars of [A-Za-z0-9_.+=-], starting with a letter or digit (names label metrics,
log lines and checkpoint files, so no spaces, slashes or control characters).
Tensors, with dictionary_learning's names (d = model width, dict = SAE latents), e.g. "relu":
    encoder.weight (dict, d), encoder.bias (dict,), decoder.weight (d, dict), bias (d,)
float32 weights for raw activations; TopK's k is an int32 scalar. Which names and shapes an
arch needs is the consumer's check (boardlens.sae.io.ae_from_tensors); this schema bounds
what any snapshot may hold: 1..MAX_TENSORS tensors named like NAME, dtypes SNAPSHOT_DTYPES,
0-2 dims, at least one element each, at most max_bytes together, and (on decode) no NaN/Inf.
Every violation raises ProtocolError("snapshot_schema").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch

from boardlens.protocol.batch import _all_finite, stream_fields
from boardlens.protocol.codec import DEFAULT_LIMITS, Limits, Message, encode
from boardlens.protocol.errors import ProtocolError
from boardlens.protocol.header import _short

MAX_NAME_CHARS = 200
MAX_TENSORS = 16  # the largest architecture has 6; room for new ones, not for abuse
MAX_SNAPSHOT_BYTES = 1 << 30  # all tensors together; an evaluator copies every one of them
SNAPSHOT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32,
                   torch.int64)
META_KEYS = ("sae", "step", "arch", "hyperparams")
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.+=-]{{0,{MAX_NAME_CHARS - 1}}}")


@dataclass
class SaeSnapshot:
    """One SAE's weights and identity; header fields copied from the message.

    Decoded snapshots view the received frames: treat tensors as read-only, clone to keep.
    """

    name: str  # stable sweep name (NAME)
    step: int  # optimiser steps this SAE has taken
    arch: str  # architecture (NAME); the tensors must be that arch's
    tensors: dict[str, torch.Tensor]  # dictionary_learning name -> tensor, 0-2 dims
    hyperparams: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable settings
    epoch: str = "0"  # trainer's snapshot-stream epoch (hex)
    seq: int = 0  # sequence number within the epoch
    game: str = ""  # the stream the SAE was trained on
    model: str = ""
    layer: int = 0
    sent_ns: int | None = None  # ns since Unix epoch; None -> time of encode
    meta: dict[str, Any] = field(default_factory=dict)  # other meta keys (not META_KEYS)


def _fail(detail: str) -> NoReturn:
    raise ProtocolError("snapshot_schema", detail)


def validate_sae_name(name: Any, what: str = "sae name") -> str:
    """`name` if it is a NAME (see the module docstring), else ProtocolError(snapshot_schema)."""
    if type(name) is not str or not _NAME.fullmatch(name):
        _fail(f"{what} must be 1-{MAX_NAME_CHARS} chars of [A-Za-z0-9_.+=-] starting with a "
              f"letter or digit, got {_short(name)}")
    return name


def _check_tensors(tensors: Any, max_bytes: int) -> None:
    if type(tensors) is not dict or not 1 <= len(tensors) <= MAX_TENSORS:
        n = len(tensors) if type(tensors) is dict else type(tensors).__name__
        _fail(f"tensors must be a dict of 1..{MAX_TENSORS} tensors, got {n}")
    total = 0
    for name, t in tensors.items():
        validate_sae_name(name, "tensor name")
        if not isinstance(t, torch.Tensor):
            _fail(f"tensor {name!r} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in SNAPSHOT_DTYPES or t.ndim > 2 or t.numel() == 0:
            _fail(f"tensor {name!r} {t.dtype}{list(t.shape)}: want a non-empty float or "
                  "int32/int64 tensor of 0-2 dims")
        total += t.numel() * t.element_size()
    if total > max_bytes:
        _fail(f"tensors hold {total} bytes > {max_bytes}")


def validate_snapshot(name: Any, step: Any, arch: Any, tensors: Any, hyperparams: Any,
                      max_bytes: int = MAX_SNAPSHOT_BYTES) -> None:
    """Check every field's type and bounds; raises ProtocolError(snapshot_schema).

    Runs in encode_snapshot and decode_snapshot; values (finiteness) only on decode.
    """
    validate_sae_name(name)
    # `type(...) is int`: bool is an int subclass and must not pass for a step.
    if type(step) is not int or not 0 <= step < 2**63:
        _fail(f"snapshot {name}: step must be an int in [0, 2**63), got {_short(step)}")
    validate_sae_name(arch, "arch")
    if type(hyperparams) is not dict:
        _fail(f"snapshot {name}: hyperparams must be a dict, got {type(hyperparams).__name__}")
    _check_tensors(tensors, max_bytes)


def encode_snapshot(snap: SaeSnapshot, limits: Limits = DEFAULT_LIMITS) -> list:
    """-> frames of a kind="snapshot" message (zero-copy, see protocol.codec.encode).

    Checks the schema (a trainer fails fast on a bad name) but not finiteness: that is the
    receiver's check, and a trainer must not stop over one snapshot.
    """
    validate_snapshot(snap.name, snap.step, snap.arch, snap.tensors, snap.hyperparams)
    clash = [k for k in META_KEYS if k in snap.meta]
    if clash:
        _fail(f"meta keys {clash} are snapshot fields; set them on SaeSnapshot")
    try:
        hyperparams = json.dumps(snap.hyperparams)
    except (TypeError, ValueError) as e:
        _fail(f"snapshot {snap.name}: hyperparams are not JSON-serialisable ({e})")
    meta = {**snap.meta, "sae": snap.name, "step": snap.step, "arch": snap.arch,
            "hyperparams": hyperparams}
    return encode("snapshot", epoch=snap.epoch, seq=snap.seq, game=snap.game, model=snap.model,
                  layer=snap.layer, tensors=snap.tensors, meta=meta, sent_ns=snap.sent_ns,
                  limits=limits)


def _hyperparams(text: Any) -> dict[str, Any]:
    if type(text) is not str:
        _fail(f"meta 'hyperparams' must be a JSON string, got {_short(text)}")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # hostile input: bad JSON or nesting too deep
        value = None
    if type(value) is not dict:
        _fail(f"meta 'hyperparams' must hold a JSON object, got {_short(text)}")
    return value


def decode_snapshot(message: Message, max_bytes: int = MAX_SNAPSHOT_BYTES) -> SaeSnapshot:
    """Check a decoded message against the snapshot schema; raises only ProtocolError."""
    h, ts = message.header, message.tensors
    if h.kind != "snapshot":
        _fail(f"kind {h.kind!r} is not 'snapshot'")
    missing = [k for k in META_KEYS if k not in h.meta]
    if missing:
        _fail(f"missing meta keys {missing}")
    hyperparams = _hyperparams(h.meta["hyperparams"])
    name, step, arch = h.meta["sae"], h.meta["step"], h.meta["arch"]
    validate_snapshot(name, step, arch, ts, hyperparams, max_bytes)
    for tname, t in ts.items():
        # One NaN weight makes every metric of the evaluation NaN; reject it at the door.
        if t.is_floating_point() and not _all_finite(t):
            _fail(f"snapshot {name}: tensor {tname!r} holds NaN or Inf")
    return SaeSnapshot(
        name=name,
        step=step,
        arch=arch,
        tensors=ts,
        hyperparams=hyperparams,
        meta={k: v for k, v in h.meta.items() if k not in META_KEYS},
        **stream_fields(h),
    )

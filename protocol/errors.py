"""Typed decode errors of the wire protocol.

Every way an incoming message can be malformed maps to one short, fixed `reason` token so a
service can count rejects with a small-cardinality Prometheus label
(`boardlens_..._messages_rejected_total{reason="dtype"}`) and carry on. `detail` is free
text for logs only; never use it as a label.
"""

from __future__ import annotations

# The fixed set of reasons; SPEC.md ("Error reasons") says which check raises which.
REASONS: tuple[str, ...] = (
    "frame_count",  # no frames, too many frames, or descriptors and frames do not pair up
    "header_size",  # header frame larger than Limits.max_header_bytes (checked before unpack)
    "header_decode",  # header is not one valid msgpack object
    "header_schema",  # wrong keys / wrong types / bad values in the header map
    "version",  # missing or unknown protocol version
    "kind",  # unknown message kind
    "dtype",  # dtype not on the allow-list (or a bool frame with bytes other than 0/1)
    "shape",  # shape is not a list of non-negative ints
    "frame_size",  # frame length != prod(shape) * itemsize, or a frame is not a buffer
    "limits",  # a Limits bound (other than header size / frame count) was exceeded
    "batch_schema",  # tensors of a "batch" message are inconsistent (see protocol.batch)
    "non_finite",  # a batch's activations hold NaN or Inf
    "snapshot_schema",  # a "snapshot" message's meta or tensors are malformed (protocol.snapshot)
    # Stream checks of a well-formed message (protocol.transport.SeqTracker):
    "out_of_order",  # seq not above the last one of its epoch: a replay or duplicate
    "seq_jump",  # a seq gap larger than any real loss (forged or corrupt)
    "epoch_flap",  # a message from an epoch the stream already left
    "end_epoch",  # an 'end' that does not belong to the epoch being consumed
)


class ProtocolError(ValueError):
    """A message violates the wire contract. `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            # A typo here would silently create a new metric label; fail loudly instead.
            raise ValueError(f"unknown ProtocolError reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):
        # Keep the error picklable (e.g. across multiprocessing) despite the 2-arg __init__.
        return (type(self), (self.reason, self.detail))

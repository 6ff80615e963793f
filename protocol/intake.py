"""Message intake: the one path from received frames to an accepted message, for every consumer
(the trainer and evaluator services, `ActivationStream`).

    admitted = admit(frames, streams)      # ProtocolError(reason) if it must be dropped
    ...                                    # the consumer uses admitted.payload, or refuses it
    lost = settle(streams, admitted, accepted=True)

`admit` decodes, asks the sender's stream (`Streams.verdict`) where the message falls, and
validates its body; none of that moves the stream. Only `settle(..., accepted=True)`, once the
consumer has taken the message, commits it: so a message rejected for any reason (its sequence,
its body, or by the consumer) changes no per-sender state, and a forged batch naming a real
producer with a new epoch cannot make the real stream look stale.
"""

from __future__ import annotations

from typing import NamedTuple

from boardlens.protocol.batch import ActivationBatch, decode_batch
from boardlens.protocol.codec import Message, decode
from boardlens.protocol.errors import ProtocolError
from boardlens.protocol.header import Header
from boardlens.protocol.transport import Streams, source_of


class Admitted(NamedTuple):
    header: Header
    source: str  # the sender's name (`source_of`)
    payload: ActivationBatch | Message  # a decoded, validated batch for kind 'batch'; else the message


def admit(frames, streams: Streams) -> Admitted:
    """Decode and validate one message and check its place in its sender's sequence, changing
    nothing; ProtocolError with the reason (protocol.errors.REASONS) if it must be dropped."""
    msg = decode(frames)
    h = msg.header
    src = source_of(h)
    _, reason = streams.verdict(src, h.epoch, h.seq, h.kind)  # every kind shares seq
    if reason is not None:  # a replayed or stale message costs no batch validation
        raise ProtocolError(reason, f"{h.kind} epoch {h.epoch} seq {h.seq}" + (f" of {src}" if src else ""))
    try:
        payload = decode_batch(msg) if h.kind == "batch" else msg
    except ProtocolError:
        streams.reject(src, h.epoch, h.seq)  # rejected, not also lost
        raise
    return Admitted(h, src, payload)


def settle(streams: Streams, admitted: Admitted, accepted: bool = True) -> int:
    """The consumer took the message (accepted) or refused it: commit it to its sender's stream
    (-> messages lost just before it), or record it as rejected (-> 0)."""
    h = admitted.header
    if accepted:
        return streams.accept(admitted.source, h.epoch, h.seq, h.kind)
    streams.reject(admitted.source, h.epoch, h.seq)
    return 0

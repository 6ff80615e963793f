"""BoardLens wire protocol: the only place that knows the bytes on the wire (see SPEC.md).

codec and batch are importable without ZeroMQ; transport (Publisher, Subscriber, ...) needs
pyzmq and is imported lazily here so that `from protocol import decode` works without it.
"""

from protocol.batch import ActivationBatch, decode_batch, encode_batch, validate_batch
from protocol.codec import (
    DEFAULT_LIMITS,
    DTYPES,
    KINDS,
    PROTOCOL_VERSION,
    Header,
    Limits,
    Message,
    TensorDesc,
    decode,
    encode,
    new_epoch,
)
from protocol.errors import REASONS, ProtocolError

_TRANSPORT = ("Publisher", "Subscriber", "SeqTracker", "SendTimeout", "TransportConfig")

__all__ = [
    "ActivationBatch",
    "DEFAULT_LIMITS",
    "DTYPES",
    "Header",
    "KINDS",
    "Limits",
    "Message",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "REASONS",
    "TensorDesc",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
    "new_epoch",
    "validate_batch",
    *_TRANSPORT,
]


def __getattr__(name: str):
    # PEP 562 lazy import: keeps `import protocol` free of zmq for codec-only users.
    if name in _TRANSPORT:
        from protocol import transport

        return getattr(transport, name)
    raise AttributeError(f"module 'protocol' has no attribute {name!r}")

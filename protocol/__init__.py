"""BoardLens wire protocol: the only place that knows the bytes on the wire (see SPEC.md).

    from boardlens.protocol import encode_batch, decode, decode_batch, Publisher, Subscriber

Names are imported lazily (PEP 562) so that `import boardlens.protocol.transport` or `.header`
does not pull in torch (~2 s) and `protocol.codec` / `.batch` / `.snapshot` never pull in zmq.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ProtocolError": "errors",
    "REASONS": "errors",
    "DEFAULT_LIMITS": "header",
    "DTYPES": "header",
    "Header": "header",
    "KINDS": "header",
    "Limits": "header",
    "PROTOCOL_VERSION": "header",
    "TensorDesc": "header",
    "new_epoch": "header",
    "Message": "codec",
    "decode": "codec",
    "encode": "codec",
    "ActivationBatch": "batch",
    "decode_batch": "batch",
    "encode_batch": "batch",
    "validate_batch": "batch",
    "SaeSnapshot": "snapshot",
    "decode_snapshot": "snapshot",
    "encode_snapshot": "snapshot",
    "validate_sae_name": "snapshot",
    "validate_snapshot": "snapshot",
    "Publisher": "transport",
    "SendTimeout": "transport",
    "SeqTracker": "transport",
    "Streams": "transport",
    "source_of": "transport",
    "Subscriber": "transport",
    "TransportConfig": "transport",
    "tune_malloc": "transport",
}
__all__ = [  # literal so linters see the re-exports; equals sorted(_EXPORTS)
    "ActivationBatch",
    "DEFAULT_LIMITS",
    "DTYPES",
    "Header",
    "KINDS",
    "Limits",
    "Message",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "Publisher",
    "REASONS",
    "SaeSnapshot",
    "SendTimeout",
    "SeqTracker",
    "Streams",
    "Subscriber",
    "TensorDesc",
    "TransportConfig",
    "decode",
    "decode_batch",
    "decode_snapshot",
    "encode",
    "encode_batch",
    "encode_snapshot",
    "new_epoch",
    "source_of",
    "tune_malloc",
    "validate_batch",
    "validate_sae_name",
    "validate_snapshot",
]

if TYPE_CHECKING:  # static analysers see ordinary imports
    from boardlens.protocol.batch import ActivationBatch, decode_batch, encode_batch, validate_batch
    from boardlens.protocol.codec import Message, decode, encode
    from boardlens.protocol.errors import REASONS, ProtocolError
    from boardlens.protocol.header import (
        DEFAULT_LIMITS,
        DTYPES,
        KINDS,
        PROTOCOL_VERSION,
        Header,
        Limits,
        TensorDesc,
        new_epoch,
    )
    from boardlens.protocol.snapshot import (
        SaeSnapshot,
        decode_snapshot,
        encode_snapshot,
        validate_sae_name,
        validate_snapshot,
    )
    from boardlens.protocol.transport import (
        Publisher,
        SendTimeout,
        SeqTracker,
        Streams,
        Subscriber,
        TransportConfig,
        source_of,
        tune_malloc,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'protocol' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

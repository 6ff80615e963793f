"""A consumer of the BoardLens wire protocol written from protocol/SPEC.md alone: it imports
pyzmq, msgpack and numpy and nothing of BoardLens (tests/protocol/test_spec_conformance.py
checks that). It reads a producer's lossless stream, checks every batch against the SPEC's
schema and label meanings, confirms the end, and returns what it counted."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import zmq

KEYS = {"v", "k", "e", "s", "t", "g", "m", "l", "x", "d"}
NUMPY = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int8": np.int8, "uint8": np.uint8,
         "int16": np.int16, "int32": np.int32, "int64": np.int64, "bool": np.bool_, "bfloat16": np.uint16}
CORE = {"acts", "tokens", "game_ids", "lengths", "label_pos"}
CENTRE = (27, 28, 35, 36)
SQUARE_OF_TOKEN = [None] + [s for s in range(64) if s not in CENTRE]  # SPEC: token t -> square
CLASSES = {"mine_theirs_empty": 3, "legal_moves": 2}  # SPEC's Othello families: values below these


def tensors(frames: list[bytes], header: dict) -> dict[str, np.ndarray]:
    """Section 1 and 3: one descriptor per frame, little-endian, C order; bfloat16 as its bits."""
    assert len(header["d"]) == len(frames) - 1
    out = {}
    for name, dtype, shape, frame in header["d"]:
        arr = np.frombuffer(frames[frame], dtype=np.dtype(NUMPY[dtype]).newbyteorder("<")).reshape(shape)
        if dtype == "bfloat16":  # the top 16 bits of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr
    return out


def check_batch(t: dict[str, np.ndarray]) -> tuple[int, int, list[int]]:
    """Section 5 and its label meanings -> (valid positions, labelled positions, game ids)."""
    families = {n[len("label/"):]: a for n, a in t.items() if n.startswith("label/")}
    assert set(t) == CORE | {f"label/{f}" for f in families}
    B, T, _ = t["acts"].shape
    lengths, pos = t["lengths"].astype(np.int64), t["label_pos"].astype(np.int64)
    assert t["tokens"].shape == (B, T) and t["game_ids"].shape == (B,) and lengths.shape == (B,)
    assert ((0 <= lengths) & (lengths <= T)).all() and pos.shape[0] == B
    labelled = pos >= 0
    assert (pos[labelled] < np.broadcast_to(lengths[:, None], pos.shape)[labelled]).all()
    for name, lab in families.items():
        assert lab.dtype == np.int8 and lab.shape[:2] == pos.shape and lab.shape[2:] == (8, 8)
        assert lab[labelled].max() < CLASSES[name] and lab[labelled].min() >= 0
    board, legal = families["mine_theirs_empty"], families["legal_moves"]
    for b, p in zip(*np.nonzero(labelled), strict=True):
        at = pos[b, p]
        square = SQUARE_OF_TOKEN[int(t["tokens"][b, at])]
        r, c = divmod(square, 8)
        assert board[b, p, r, c] != 0  # the move just played put a disc on its square
        assert (board[b, p][legal[b, p] == 1] == 0).all()  # a legal move is an empty square
    return int(lengths.sum()), int(labelled.sum()), t["game_ids"].tolist()


def consume(endpoint: str, name: str = "spec-consumer", timeout_s: float = 120) -> dict:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.SUBSCRIBE, b"\xfe" + b"hello:" + name.encode())  # section 8: it waits for our end
    sock.connect(endpoint)
    seen = {"batches": 0, "tokens": 0, "labelled": 0, "games": [], "seqs": [], "end_tokens": None, "heartbeats": 0}
    try:
        while True:
            assert sock.poll(int(timeout_s * 1000)), "no message"
            frames = sock.recv_multipart()
            header = msgpack.unpackb(frames[0], raw=False)
            assert set(header) == KEYS and header["v"] == 1 and isinstance(header["s"], int)
            if header["k"] == "heartbeat":  # section 4: the sender lives; it takes no seq
                seen["heartbeats"] += 1
                continue
            seen["seqs"].append(header["s"])
            if header["k"] == "batch":
                tokens, labelled, games = check_batch(tensors(frames, header))
                seen["batches"] += 1
                seen["tokens"] += tokens
                seen["labelled"] += labelled
                seen["games"] += games
            elif header["k"] == "end":
                seen["end_tokens"] = header["x"]["tokens"]
                ack = f"{header['e']}:{header['s']}:{name}".encode()
                sock.setsockopt(zmq.SUBSCRIBE, b"\xff" + b"end:" + ack)  # confirm: the producer may exit
                time.sleep(0.5)
                return seen
    finally:
        sock.close()
        ctx.term()

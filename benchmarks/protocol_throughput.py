"""Throughput of the protocol path vs raw pyzmq zero-copy, over tcp loopback, in one run.

    .venv/bin/python benchmarks/protocol_throughput.py [--n 2000] [--reps 3]

Sender: this process. Receiver: a subprocess (this file with --receive), so sender and receiver
do not share a GIL, as producer and consumer do not in production. Each message is one
activation batch of ~1 MiB: acts (64, 59, 64) float32 + tokens (64, 59) int64 + game_ids,
lengths, label_pos (64, 4) and label/board (64, 4, 8, 8) int8, 7 frames.

  raw:  XPUB(NODROP) send_multipart(copy=False) of the same 7 prebuilt buffers
        -> SUB recv_multipart(copy=False); the receiver only counts messages.
  ours: encode_batch (per message, new seq) -> Publisher.send -> Subscriber.recv -> decode
        -> decode_batch (validated tensors viewing the frames); neither side reads the payload.
Both use the same socket types, HWMs and options. Throughput is measured at the receiver from
the first to the last message (GB = 1e9 bytes); raw and ours alternate;
medians, bests and the median of the per-pair ratios are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

import zmq  # noqa: E402

HWM = 64


def make_batch():
    import torch

    from protocol import ActivationBatch

    b, t, d, p = 64, 59, 64, 4
    return ActivationBatch(
        acts=torch.randn(b, t, d),  # (B, T, D) float32, 944 KiB
        tokens=torch.randint(0, 61, (b, t)),
        game_ids=torch.arange(b),
        lengths=torch.full((b,), t, dtype=torch.int16),
        label_pos=torch.randint(0, t, (b, p), dtype=torch.int16),
        labels={"board": torch.randint(0, 3, (b, p, 8, 8), dtype=torch.int8)},
        epoch="00c0ffee", game="othello", model="bench", layer=6,
    )


def receive(mode: str, endpoint: str, n: int) -> None:
    """Receiver subprocess: take n messages, print {"seconds": first->last, "bytes": ...}."""
    if mode == "raw":
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(endpoint)

        def recv_one() -> int:
            return sum(len(f.buffer) for f in sock.recv_multipart(copy=False))
    else:
        from protocol import decode, decode_batch
        from protocol.transport import Subscriber, TransportConfig

        sub = Subscriber(endpoint, cfg=TransportConfig(rcvhwm_msgs=HWM))

        def recv_one() -> int:
            frames = sub.recv()
            batch = decode_batch(decode(frames))
            assert batch.acts.shape == (64, 59, 64)
            return sum(len(f.buffer) for f in frames)

    nbytes = recv_one()
    import resource
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for _ in range(n - 1):
        recv_one()
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": dt, "bytes": nbytes * (n - 1), "msg_bytes": nbytes,
                      "rx_cpu_us": (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / n * 1e6,
                      "rx_minflt": (r1.ru_minflt - r0.ru_minflt) / n}))


def send(mode: str, n: int) -> dict:
    """Bind, start the receiver subprocess, wait for its subscription, send n messages."""
    from protocol import encode_batch
    from protocol.transport import Publisher, TransportConfig

    batch = make_batch()
    if mode == "raw":
        frames = encode_batch(batch)  # the same bytes as ours, built once
        sock = zmq.Context.instance().socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.setsockopt(zmq.LINGER, 5000)
        sock.bind("tcp://127.0.0.1:0")
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    else:
        pub = Publisher("tcp://127.0.0.1:0", None, TransportConfig(sndhwm_msgs=HWM))
        endpoint = pub.lossless_endpoint
    proc = subprocess.Popen([sys.executable, __file__, "--receive", mode, endpoint, str(n)],
                            stdout=subprocess.PIPE, text=True)
    try:
        import resource
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        if mode == "raw":
            assert sock.poll(30_000), "receiver did not subscribe"
            sock.recv()  # the subscription: from now on every message reaches it
            for _ in range(n):
                sock.send_multipart(frames, copy=False)
        else:
            assert pub.wait_for_subscribers(1, timeout_s=30), "receiver did not subscribe"
            for seq in range(n):
                batch.seq = seq
                pub.send(encode_batch(batch))
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        tx = {"tx_cpu_us": (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / n * 1e6,
              "tx_minflt": (r1.ru_minflt - r0.ru_minflt) / n}
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill() if proc.poll() is None else None
        sock.close() if mode == "raw" else pub.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} receiver failed with {proc.returncode}")
    return {**json.loads(out), **tx}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="messages per measurement")
    ap.add_argument("--reps", type=int, default=5, help="alternating raw/ours repetitions")
    ap.add_argument("--receive", nargs=3, metavar=("MODE", "ENDPOINT", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.receive:
        receive(args.receive[0], args.receive[1], int(args.receive[2]))
        return

    rates: dict[str, list[float]] = {"raw": [], "ours": []}
    for rep in range(args.reps):
        for mode in ("raw", "ours"):
            r = send(mode, args.n)
            rates[mode].append(r["bytes"] / r["seconds"] / 1e9)
            print(f"rep {rep} {mode:4s}: {rates[mode][-1]:.2f} GB/s "
                  f"({args.n} x {r['msg_bytes']} B in {r['seconds']:.2f} s)", r, flush=True)
    # Back-to-back pairs see similar machine load (2 shared cores), so the median of the
    # per-pair ratios is steadier than the ratio of the medians.
    ratio = statistics.median(o / r for r, o in zip(rates["raw"], rates["ours"], strict=True))
    for mode, label in (("raw", "raw pyzmq zero-copy"), ("ours", "protocol full path ")):
        print(f"{label}: median {statistics.median(rates[mode]):.2f} GB/s, "
              f"best {max(rates[mode]):.2f} GB/s")
    print(f"ratio ours / raw (median of pairs): {ratio:.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()

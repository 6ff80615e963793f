"""A third party can implement the wire from protocol/SPEC.md: tests/protocol/spec_consumer.py,
which imports only pyzmq, msgpack and numpy, reads a live producer's stream with its labels,
confirms the end (the producer then exits at once, its end confirmed), and counts exactly what
the producer says it sent."""

import ast
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.protocol.spec_consumer import consume
from tests.services.helpers import small_model

HERE = Path(__file__).resolve().parent


def test_the_spec_consumer_imports_nothing_of_boardlens():
    tree = ast.parse((HERE / "spec_consumer.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported == {"__future__", "time", "msgpack", "numpy", "zmq"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
@pytest.mark.timeout(200)
def test_a_consumer_written_from_the_spec_reads_a_live_stream_and_confirms_its_end(tmp_path):
    model = small_model(tmp_path / "m")
    port, lossy = _port(), _port()
    log = open(tmp_path / "producer.log", "w")
    producer = subprocess.Popen(
        [sys.executable, "-m", "boardlens.services.cli", "produce", "--model", model, "--bind",
         f"tcp://127.0.0.1:{port}", "--bind-lossy", f"tcp://127.0.0.1:{lossy}", "--wait-consumers", "1",
         "--max-tokens", "20000", "--metrics-port", "0", "--threads", "1", "--name", "p0",
         "--status-dir", str(tmp_path)], stdout=log, stderr=subprocess.STDOUT)
    try:
        seen = consume(f"tcp://127.0.0.1:{port}")
        t0 = time.monotonic()
        assert producer.wait(60) == 0
        assert time.monotonic() - t0 < 30  # it had its confirmation: no drain timeout
    finally:
        if producer.poll() is None:
            producer.kill()
    status = json.loads((tmp_path / "producer_status.json").read_text())
    assert seen["tokens"] == seen["end_tokens"] == status["tokens"] >= 20000
    assert seen["batches"] == status["batches"] and len(seen["games"]) == status["games"]
    assert len(set(seen["games"])) == len(seen["games"]) and seen["labelled"] == seen["tokens"]  # Othello: P = T
    assert seen["seqs"] == list(range(seen["seqs"][0], seen["seqs"][0] + len(seen["seqs"])))
    assert "end of stream confirmed by spec-consumer" in (tmp_path / "producer.log").read_text()

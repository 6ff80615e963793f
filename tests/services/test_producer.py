"""The producer over real sockets: batches decode, labels match a replay of the tokens."""

import threading
import time

import numpy as np
import pytest
import torch

from boardlens.games.othello import tokenizer
from boardlens.games.othello.engine import replay
from boardlens.games.othello.labels import label_games
from boardlens.protocol import Subscriber, TransportConfig, decode, decode_batch
from boardlens.services.config import DEFAULT_MODEL, ProducerConfig
from boardlens.services.producer import Producer
from boardlens.services.telemetry import Telemetry
from boardlens.services.up import spawn, stop_processes
from tests.services.helpers import free_ports, model_dims, wait_for

pytestmark = pytest.mark.timeout(120)


def _collect(prod) -> tuple[list, object]:
    """Run the producer in a thread until its end of stream -> (batches, the 'end' message)."""
    sub = Subscriber(prod.pub.lossless_endpoint)
    stop = threading.Event()
    worker = threading.Thread(target=prod.run, args=(stop,))
    worker.start()
    try:
        batches, end = [], None
        while end is None:
            frames = sub.recv(60_000)
            assert frames is not None, "producer went silent"
            msg = decode(frames)
            if msg.header.kind == "end":
                end = msg
                sub.confirm_end(msg.header.epoch, msg.header.seq)
                worker.join(30)  # the producer returns once the end is confirmed
                assert not worker.is_alive(), "producer still waiting after the confirmation"
            elif msg.header.kind == "batch":  # not a heartbeat (a producer waiting on slow games)
                batches.append(decode_batch(msg))
        return batches, end
    finally:
        stop.set()
        worker.join(30)
        sub.close()
        prod.close()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batches_carry_aligned_labels_and_end(dtype):
    cfg = ProducerConfig(model=DEFAULT_MODEL + "-random", bind="tcp://127.0.0.1:0",
                         bind_lossy="tcp://127.0.0.1:0", batch_games=8, max_tokens=1000,
                         dtype=dtype, wait_consumers=1, wait_timeout_s=30, metrics_port=0)
    batches, end = _collect(Producer(cfg, Telemetry("test-producer", 0)))
    assert end.header.meta["tokens"] == sum(b.n_tokens for b in batches) >= 1000
    assert [b.seq for b in batches] == list(range(len(batches))) and end.header.seq == len(batches)
    ids = torch.cat([b.game_ids for b in batches])
    assert torch.equal(ids, torch.arange(ids.numel()))
    for b in batches:
        assert b.acts.dtype == getattr(torch, dtype) and b.acts.shape == (8, 59, model_dims(cfg.model)[0])
        # Labels must be those of the games the tokens spell (independent replay).
        squares = tokenizer.decode(b.tokens.numpy())
        rec = replay(np.where(squares >= 0, squares, -1))
        want = label_games(rec, 59)
        valid = np.arange(59)[None, :] < b.lengths.numpy()[:, None]
        for fam, lab in b.labels.items():
            assert (lab.numpy()[valid] == want[fam][valid]).all(), fam
        assert (b.label_pos.numpy()[valid] == np.broadcast_to(np.arange(59), valid.shape)[valid]).all()


@pytest.mark.timeout(300)  # 40 batches of the 8 x 256 model: slow when the cores are busy
def test_the_producer_waits_until_a_slow_subscriber_confirms_the_end(tmp_path):
    """A real process: it may exit only once the subscriber has read 'end', not when its
    queue has merely reached the kernel (which loses that data if the subscriber is slow)."""
    port, metrics = free_ports(2)
    # A tiny receive queue: the backlog stays in the producer's send queue (HWM 64 x ~3 MB,
    # more than the kernel's socket buffers absorb).
    sub = Subscriber(f"tcp://127.0.0.1:{port}", cfg=TransportConfig(rcvhwm_msgs=1), name="slow-reader")
    log = tmp_path / "producer.log"
    proc = spawn("produce", ["--model", DEFAULT_MODEL + "-random", "--bind", f"tcp://127.0.0.1:{port}",
                             "--bind-lossy", "tcp://127.0.0.1:0", "--batch-games", "64",
                             "--max-tokens", "150000", "--wait-consumers", "1", "--threads", "1",
                             "--metrics-port", str(metrics)], log)
    kinds = []
    try:
        wait_for(lambda: "reached max_tokens" in log.read_text(), 180, "the producer to finish streaming")
        time.sleep(2.0)  # longer than the default 1 s linger
        while not kinds or kinds[-1] != "end":
            frames = sub.recv(15_000)
            assert frames is not None, f"stream stopped after {len(kinds)} messages"
            kinds.append(decode(frames).header.kind)
        time.sleep(1.5)
        assert proc.poll() is None, "the producer exited before the end was confirmed"
        end = decode(frames).header
        sub.confirm_end(end.epoch, end.seq)
        assert proc.wait(30) == 0
    finally:
        sub.close()
        stop_processes({"producer": proc}, timeout_s=10)
    data = [k for k in kinds if k != "heartbeat"]  # the producer beat while it waited for this reader
    assert data.count("batch") == len(data) - 1 >= 10
    assert "end of stream confirmed by slow-reader" in log.read_text()


def test_chess_from_a_pgn_file_streams_every_game_with_its_labels_then_ends(tmp_path):
    from boardlens.games.chess.families import label_board
    from boardlens.games.chess.sources import generate, parse_source
    from boardlens.games.chess.tokenizer import decode as decode_chars
    from boardlens.games.chess.transcripts import dot_positions
    from boardlens.lm.checkpoint import load_model

    texts = generate(parse_source("random"), 11, (5,))
    pgn = tmp_path / "games.pgn"
    pgn.write_text("".join(f'[Event "{i}"]\n\n{" ".join(t[1:].split(" ")[:-1])} *\n\n'
                           for i, t in enumerate(texts)))
    model = DEFAULT_MODEL.replace("othello", "chess") + "-random"
    cfg = ProducerConfig(model=model, source=f"pgn:{pgn}", label_workers=1, batch_games=4,
                         bind="tcp://127.0.0.1:0", bind_lossy="tcp://127.0.0.1:0", wait_consumers=1,
                         wait_timeout_s=30, metrics_port=0)
    batches, end = _collect(Producer(cfg, Telemetry("test-producer", 0)))
    assert [len(b.game_ids) for b in batches] == [4, 4, 3]  # the file's 11 games, then 'end'
    assert end.header.game == "chess" and end.header.meta["tokens"] == sum(b.n_tokens for b in batches)
    net, _ = load_model(model)
    streamed = []
    for b in batches:
        assert b.game == "chess" and b.layer == 5 and b.acts.shape[1:] == (256, 192)
        assert b.label_pos.shape[1] == 20 and set(b.labels) >= {"piece", "threat", "any_fork"}
        _, resid = net(b.tokens, resid_layers=(5,), stop_after=5)
        torch.testing.assert_close(b.acts, resid[5], rtol=1e-4, atol=1e-4)
        for g in range(len(b.game_ids)):
            text = decode_chars(b.tokens[g, : int(b.lengths[g])].numpy())
            streamed.append(text)
            for p, (pos, board) in enumerate(dot_positions(text)):
                assert int(b.label_pos[g, p]) == pos
                for fam, value in label_board(board).items():
                    assert (b.labels[fam][g, p].numpy() == value).all(), fam
    # PGN -> transcript keeps the complete moves; the cut last chunk of each game is dropped.
    assert streamed == [t.rsplit(" ", 1)[0] for t in texts]


@pytest.mark.parametrize("args, message", [
    (["--model", "models/chess-gpt-random", "--source", "pgn:/no/such/file.pgn"], "no such file"),
    (["--source", "stockfish"], "'random' source only"),  # the default model is Othello's
    (["--model", "/no/such/model"], "/no/such/model"),
    # Told to wait for a consumer that never comes: an error, not an empty stream that ends well.
    (["--model", "models/othello-gpt-random", "--wait-consumers", "1", "--wait-timeout-s", "1"],
     "gave up after 1 s waiting for 1 lossless subscribers (connected: 0)"),
])
def test_bad_start_config_is_a_one_line_error(args, message):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "boardlens.services.cli", "produce", *args, "--metrics-port", "0",
                        "--bind", "tcp://127.0.0.1:0", "--bind-lossy", "tcp://127.0.0.1:0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bfloat16_on_the_wire_is_the_fp32_forward_rounded_and_each_producer_names_itself():
    def run(wire: str):
        cfg = ProducerConfig(model=DEFAULT_MODEL + "-random", bind="tcp://127.0.0.1:0",
                             bind_lossy="tcp://127.0.0.1:0", batch_games=8, max_tokens=1000, seed=3,
                             wire_dtype=wire, name="p-3", wait_consumers=1, wait_timeout_s=30, metrics_port=0)
        return _collect(Producer(cfg, Telemetry("test-producer", 0)))

    (fp32, _), (bf16, end) = run("float32"), run("bfloat16")
    assert len(fp32) == len(bf16) > 1 and end.header.meta["src"] == "p-3"
    for a, b in zip(fp32, bf16, strict=True):
        assert a.acts.dtype == torch.float32 and b.acts.dtype == torch.bfloat16  # declared in the header
        assert torch.equal(a.acts.to(torch.bfloat16), b.acts)  # the same forward, rounded: half the bytes
        assert b.meta["src"] == "p-3"
        assert torch.equal(a.game_ids, b.game_ids) and int(a.game_ids.min()) >= 3 << 40  # seed 3's own ids

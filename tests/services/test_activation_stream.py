"""The stream as a plain iterator, fed to dictionary_learning's own training loop (trainSAE)."""

import os
import sys
import types

import pytest
import torch

from boardlens.services.activations import ActivationStream
from tests.services.helpers import free_ports, model_dims, services, start

MODEL = os.path.join(os.path.dirname(__file__), "..", "..", "models", "othello-gpt")
D, LAYER = model_dims(MODEL)  # the stream: the model's default SAE layer
pytestmark = pytest.mark.timeout(300)


def test_dictionary_learning_trains_on_our_stream(tmp_path, dictionary_learning, monkeypatch):
    # trainSAE's module imports wandb at the top; it is only used when use_wandb=True. The stand-in
    # leaves with the test (left behind, it breaks transformers' import of wandb in later tests).
    if "wandb" not in sys.modules:
        monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace())
    from dictionary_learning.trainers.standard import StandardTrainer
    from dictionary_learning.training import trainSAE

    port, pm = free_ports(2)
    tokens = 60 * 59 * 6  # 6 messages of 60 games x 59 positions
    procs = {"producer": start("produce", "--model", MODEL, "--bind", f"tcp://127.0.0.1:{port}",
                               "--batch-games", "60", "--max-tokens", str(tokens), "--wait-consumers", "1",
                               "--wait-lossy-consumers", "0", "--threads", "1", "--metrics-port", str(pm),
                               log_path=tmp_path / "producer.log")}
    with services(procs, {"producer": tmp_path / "producer.log"}):
        with ActivationStream(f"tcp://127.0.0.1:{port}", batch_size=512, shuffle_activations=4096,
                              idle_timeout_s=120) as stream:
            seen = []

            def tap():
                for x in stream:
                    seen.append(x.clone())
                    yield x

            trainSAE(data=tap(), trainer_configs=[dict(
                trainer=StandardTrainer, steps=10_000, activation_dim=D, dict_size=512, layer=LAYER, lm_name="othello",
                lr=1e-3, l1_penalty=0.01, warmup_steps=5, sparsity_warmup_steps=None, device="cpu", seed=0)],
                steps=10_000, save_dir=str(tmp_path / "dl"), device="cpu")
            assert stream.lost == 0 and stream.rejected == 0
            assert stream.source["layer"] == LAYER and stream.source["game"] == "othello"
    # The stream ended with the producer, after every full batch of its tokens.
    assert len(seen) == tokens // 512 and all(x.shape == (512, D) for x in seen)
    rows = torch.cat(seen)
    ae = dictionary_learning.AutoEncoder.from_pretrained(str(tmp_path / "dl" / "trainer_0" / "ae.pt"))
    start_err = (rows[:512] - rows[:512].mean(0)).pow(2).sum(-1).mean()
    assert (rows[:512] - ae(rows[:512])).pow(2).sum(-1).mean() < 0.5 * start_err  # it learned


def test_stream_batches_in_order_and_stops_at_max_batches(tmp_path):
    port, pm = free_ports(2)
    procs = {"producer": start("produce", "--model", MODEL, "--bind", f"tcp://127.0.0.1:{port}",
                               "--batch-games", "8", "--wait-consumers", "1", "--wait-lossy-consumers", "0",
                               "--threads", "1", "--metrics-port", str(pm), log_path=tmp_path / "producer.log")}
    with services(procs, {"producer": tmp_path / "producer.log"}):
        with ActivationStream(f"tcp://127.0.0.1:{port}", batch_size=1000, max_batches=3, idle_timeout_s=120) as s:
            got = list(s)
    assert [x.shape for x in got] == [(1000, D)] * 3
    with pytest.raises(ValueError):
        ActivationStream(f"tcp://127.0.0.1:{port}", batch_size=100, shuffle_activations=150)

"""Real service processes for the e2e tests: start, scrape, stop (always bounded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from boardlens.services.config import DEFAULT_MODEL
from boardlens.services.trainer import EXIT_STOPPED
from boardlens.services.up import free_ports, spawn, stop_processes  # noqa: F401 (free_ports: re-exported for the tests)

RANDOM_MODEL = DEFAULT_MODEL + "-random"  # same shapes as the bundled model, untrained


def small_model(folder: Path) -> str:
    """A 2 x 64 random-init Othello model (a config, built on load): a fast producer whose
    small batches run far ahead of a slow reader, whatever this machine's speed."""
    cfg = json.loads((Path(RANDOM_MODEL) / "config.json").read_text())
    cfg.update(gpt={**cfg["gpt"], "n_layer": 2, "n_head": 2, "n_embd": 64}, sae_layer=1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


@contextmanager
def saturated_cores(n: int = os.cpu_count() or 2):
    """n busy processes for the duration: guarantees must hold on a loaded machine too."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def start(command: str, *args: str, log_path) -> subprocess.Popen:
    return spawn(command, list(args), log_path)


@contextmanager
def services(procs: dict[str, subprocess.Popen], logs: dict):
    """SIGTERM (then kill) every process on exit; print the logs of failures."""
    try:
        yield procs
    finally:
        stop_processes(procs, timeout_s=30)
        for name, p in procs.items():
            if p.returncode not in (0, EXIT_STOPPED):  # a trainer stopped before its end: 143
                print(f"--- {name} exited {p.returncode}:\n{open(logs[name]).read()[-3000:]}")


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels) -> float:
    """Sum of samples named `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def healthz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(predicate, timeout_s: float, what: str, procs=None, interval_s: float = 0.5):
    """Poll until predicate() is truthy; fail with `what` on timeout or a dead process."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, p in (procs or {}).items():
            if p.poll() is not None:
                raise AssertionError(f"{name} exited early with {p.returncode} while waiting for {what}")
        try:
            got = predicate()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def synthetic_batch(epoch: str, seq: int, d: int = 32, acts=None, src: str = ""):
    """A valid Othello-shaped batch of random numbers: 16 games of 59 positions, width d, from
    sender `src` ('' = a lone sender)."""
    import torch

    from boardlens.protocol import ActivationBatch

    B, T = 16, 59
    return ActivationBatch(
        acts=torch.randn(B, T, d) if acts is None else acts, tokens=torch.randint(1, 61, (B, T)),
        game_ids=torch.arange(seq * B, (seq + 1) * B), lengths=torch.full((B,), T, dtype=torch.int16),
        label_pos=torch.arange(T, dtype=torch.int16).repeat(B, 1),
        labels={"mine_theirs_empty": torch.randint(0, 3, (B, T, 8, 8), dtype=torch.int8),
                "legal_moves": torch.randint(0, 2, (B, T, 8, 8), dtype=torch.int8)},
        epoch=epoch, seq=seq, game="othello", model="test", layer=0, meta={"src": src} if src else {})


def model_dims(folder) -> tuple[int, int]:
    """(residual width, default SAE layer) of a bundled model folder, from its config.json."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    return cfg["gpt"]["n_embd"], cfg["sae_layer"]


class _Evil:
    """Unpickling it would run os.system (touching a marker file): the marker must never appear."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_pickle(path: Path, marker: Path) -> Path:
    """A pickle at `path` whose loading with plain pickle would touch `marker`."""
    import pickle

    path.write_bytes(pickle.dumps({"state": _Evil(marker)}, protocol=2))
    return path

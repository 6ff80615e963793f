"""`boardlens up`: the three services as separate processes on loopback, with live progress.

Writes `<run>/config.yaml` (all three resolved sections, also what the children read),
starts evaluator, trainer and producer (the producer waits for both consumers), shows one
progress line read from their status records (`<run>/<service>_status.json`, see
services/status.py; never from /metrics, which is Prometheus' interface), and stops after
--tokens (end of stream flows producer -> trainer -> evaluator) or on Ctrl-C (SIGTERM to
every child). Then it prints the final table from `<run>/final_metrics.json`. With
--no-evaluate only producer and trainer run (training alone, e.g. `sae floor`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from boardlens.atomic import write_text
from boardlens.progress import Progress
from boardlens.services.config import (
    DEFAULT_GAME,
    RUNS_DIR,
    EvaluatorConfig,
    ProducerConfig,
    TrainerConfig,
    bundled_model,
    resolve,
)
from boardlens.services.status import (
    EvaluatorStatus,
    ProducerStatus,
    ServiceStatus,
    TrainerStatus,
    read_status,
    status_path,
)

SERVICES = ("evaluator", "trainer", "producer")


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on loopback (bound together, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


UP_SAES = ("standard:penalty=0.05,normalize=true", "p_anneal:penalty=0.05,normalize=true")
"""`up`'s sweep without a config file or --saes. Normalised: on the bundled Othello model (1M
tokens) average board reconstruction 0.219 / 0.188 against 0.147 / 0.193 unnormalised (a
trained model's residual is far from unit norm: starting losses ~50x larger slow a short run)."""


def build_configs(config_file: str | None, run_dir: str, tokens: int, base_port: int,
                  game=DEFAULT_GAME, model=None, source=None, label_workers=None, saes=(), d_sae=None,
                  batch_size=None, steps=None, lr=None, train_games=None, test_games=None,
                  device=None, evaluate=True) -> dict:
    """Resolve the three configs for a loopback run; flags given to `up` win over the file.
    evaluate=False: producer and trainer only (no evaluator section, nothing waits for one).

    Without a config file, `up` is tuned for a short run on a laptop: lr 1e-3 with a
    100-step warmup (the paper's 3e-4 and 1000 steps suit its 36k-step runs), activations
    scaled to unit mean squared norm (UP_SAES), snapshots every 50 steps, one torch thread per
    process on small machines.
    """
    ports = list(range(base_port, base_port + 6)) if base_port else free_ports(6)
    ep = [f"tcp://127.0.0.1:{p}" for p in ports[:3]]
    batch = batch_size or 2048
    # Three processes share the cores: oversubscribed torch threads spin and slow everyone.
    ncpu = os.cpu_count() or 2
    threads = None if config_file else {"producer": 1, "evaluator": 1, "trainer": max(1, ncpu - 2)}
    th = (lambda name: threads[name]) if threads else (lambda name: None)
    if model is None and game != DEFAULT_GAME:  # the default game's model is the config default
        model = bundled_model(game)
    prod = resolve(ProducerConfig, config_file, {
        "model": model, "source": source, "label_workers": label_workers, "device": device,
        "bind": ep[0], "bind_lossy": ep[1], "max_tokens": tokens,
        "wait_consumers": 1, "wait_lossy_consumers": int(evaluate), "metrics_port": ports[3],
        "threads": th("producer"), "status_dir": run_dir})
    train = resolve(TrainerConfig, config_file, {
        "connect": ep[0], "snapshot_bind": ep[2], "run_dir": run_dir,
        "saes": tuple(saes) or (UP_SAES if not config_file else None),
        "d_sae": d_sae, "batch_size": batch, "device": device, "metrics_port": ports[4],
        "buffer_activations": max(16 * batch, 30_000),
        "steps": steps or max(1, tokens // batch) if tokens else steps,
        "lr": lr or (1e-3 if not config_file else None),
        "warmup_steps": 100 if not config_file else None, "snapshot_every": 50 if not config_file else None,
        "threads": th("trainer"), "resume": "never"})  # `up` always starts a run afresh
    if not evaluate:
        return {"producer": prod, "trainer": train}
    ev = resolve(EvaluatorConfig, config_file, {
        "connect": ep[1], "snapshots": ep[2], "run_dir": run_dir, "train_games": train_games,
        "test_games": test_games, "metrics_port": ports[5], "threads": th("evaluator"),
        "model": prod.model})  # the same LM: its MLP neurons and floor SAEs are references
    return {"producer": prod, "trainer": train, "evaluator": ev}


def progress_line(run_dir: Path, t0: float) -> str:
    """One status line from the services' status records (a service that has exited left its
    last one)."""
    p = read_status(run_dir, ProducerStatus)
    t = read_status(run_dir, TrainerStatus)
    e = read_status(run_dir, EvaluatorStatus)
    elapsed = time.time() - t0
    tokens = p.tokens if p else 0
    parts = [f"{elapsed:5.0f}s", f"tokens {tokens:,} ({tokens / max(elapsed, 1e-9):,.0f}/s)"]
    if t is not None and t.step:
        parts.append(f"step {t.step}")
        parts += [f"{name}: loss {s.loss:.3f} L0 {s.l0:.1f}" for name, s in sorted(t.saes.items())]
    if e is not None and e.saes:
        parts.append(f"best cov {max(s.coverage for s in e.saes.values()):.3f} "
                     f"rec {max(s.reconstruction for s in e.saes.values()):.3f}")
    if e is not None and e.references:  # the floor and ceiling the SAEs' reconstruction stands between
        parts.append("rec " + " ".join(f"{n} {v:.3f}" for n, v in sorted(e.references.items())))
    if e is not None and not e.saes:
        parts.append(f"eval set {sum(e.games.values())} games")
    return " | ".join(parts)


STALL_AFTER_S = 180.0


class StallWatch:
    """Watches one service's status record; `stalled(s)` once its progress has not moved for
    s seconds (a missing record counts as no progress)."""

    def __init__(self, run_dir: Path, cls: type[ServiceStatus] = TrainerStatus) -> None:
        self.run_dir, self.cls = run_dir, cls
        self.progress, self.since = -1, time.monotonic()

    def stalled(self, after_s: float) -> bool:
        status = read_status(self.run_dir, self.cls)
        progress = status.progress if status is not None else -1
        if progress != self.progress:
            self.progress, self.since = progress, time.monotonic()
        return time.monotonic() - self.since > after_s


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in rows])


REFERENCE_ORDER = ("linear_probe", "mlp_neurons", "random_sae", "random_init_sae")


def final_table(run_dir: Path) -> str:
    """Per SAE, then per reference: step, L0, FVE and the family averages; then
    coverage/reconstruction per family (rows) for every SAE and reference (columns)."""
    path = run_dir / "final_metrics.json"
    if not path.exists():
        return f"(no evaluation finished: {path} is missing)"
    return format_table(json.loads(path.read_text()))


def format_table(final: dict) -> str:
    """The tables of a `{"saes": {name: record}, "references": {name: record}}` document."""
    latest, refs = final.get("saes", {}), final.get("references", {})
    if not latest:
        return "(no SAE was evaluated)"
    ref_names = sorted(refs, key=lambda n: next((i for i, p in enumerate(REFERENCE_ORDER) if n.startswith(p)), 9))
    rows = {**{n: latest[n] for n in sorted(latest)}, **{f"[{n}]": refs[n] for n in ref_names}}
    groups = list(next(iter(latest.values())).get("averages", {}))

    def num(r: dict, key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "-"

    summary = _table(
        ["sae / [reference]", "step", "L0", "FVE", "loss rec", *[f"{g} {m}" for g in groups for m in ("cov", "rec")]],
        [[n, str(r.get("step", "-")), num(r, "l0", ".1f"), num(r, "var_explained", ".3f"),
          num(r.get("loss", {}), "recovered", ".3f"),
          *[f"{r['averages'][g][m]:.3f}" for g in groups for m in ("coverage", "reconstruction")]]
         for n, r in rows.items()])
    fams = list(next(iter(latest.values()))["families"])
    per_family = _table(
        ["cov / rec", *rows],
        [[f, *[f"{r['families'][f]['coverage']:.3f} / {r['families'][f]['reconstruction']:.3f}"
               for r in rows.values()]] for f in fams])
    return summary + "\n\n" + per_family


def run(config_file=None, tokens=2_000_000, run_dir=None, quiet=False, base_port=0, **flags) -> int:
    run_path = Path(run_dir or f"{RUNS_DIR}/{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        run_path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot create the run folder {run_path}: {e.strerror or e} "
              f"(give --run-dir, or set BOARDLENS_RUNS to a writable folder)", file=sys.stderr)
        return 2
    try:
        cfgs = build_configs(config_file, str(run_path), tokens, base_port, **flags)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg_file = run_path / "config.yaml"
    write_text(cfg_file, yaml.safe_dump({k: _plain(dataclasses.asdict(v)) for k, v in cfgs.items()}, sort_keys=True))
    (run_path / "logs").mkdir(exist_ok=True)
    for name in SERVICES:  # an earlier run's records would pass for this one's
        status_path(run_path, name).unlink(missing_ok=True)
    print(f"boardlens up: run folder {run_path}, config {cfg_file}", flush=True)
    commands = {"evaluator": "evaluate", "trainer": "train", "producer": "produce"}
    procs = {name: spawn(commands[name], ["--config", str(cfg_file)], run_path / "logs" / f"{name}.log")
             for name in SERVICES if name in cfgs}
    interrupted = threading.Event()
    old = {s: signal.signal(s, lambda *_: interrupted.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    t0, code = time.time(), 0
    watch = StallWatch(run_path)
    bar = Progress(tokens or None, "token", every_s=10.0)
    try:
        while not interrupted.is_set():
            failed = [n for n, p in procs.items() if p.poll() not in (None, 0)]
            if failed:
                bar.close()
                print(f"error: {', '.join(failed)} exited with an error; see {run_path / 'logs'}", file=sys.stderr)
                code = 1
                break
            if all(p.poll() is not None for p in procs.values()):
                break
            # A stall is a trainer still running without progress after the producer's end; once it
            # has exited, the evaluator may take minutes over the last snapshots (chess on 2 cores).
            if procs["producer"].poll() == 0 and procs["trainer"].poll() is None and watch.stalled(STALL_AFTER_S):
                bar.close()
                print(f"error: the producer has finished but the trainer made no progress for "
                      f"{STALL_AFTER_S:.0f} s (end of stream lost?); stopping. See {run_path / 'logs'}",
                      file=sys.stderr)
                code = 1
                break
            if not quiet:
                producer = read_status(run_path, ProducerStatus)
                bar.show(producer.tokens if producer else 0, progress_line(run_path, t0)[:200])
            time.sleep(1.0)
    finally:
        bar.close()
        for name in stop_processes(procs, timeout_s=60):
            print(f"{name} did not stop within 60 s; killed it", file=sys.stderr)
        for s, h in old.items():
            signal.signal(s, h)
    if "evaluator" in cfgs:
        print(final_table(run_path), flush=True)
    metrics = ", metrics.jsonl" if "evaluator" in cfgs else ""
    print(f"run folder: {run_path} (config.yaml, checkpoints/, train.jsonl{metrics}, logs/)")
    return code


def spawn(command: str, args: list[str], log_path: Path) -> subprocess.Popen:
    """Start `boardlens <command> <args>` as a child process logging to log_path."""
    with open(log_path, "w") as logf:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "boardlens.services.cli", command, *args],
                                stdout=logf, stderr=subprocess.STDOUT)


def stop_processes(procs: dict[str, subprocess.Popen], timeout_s: float) -> list[str]:
    """SIGTERM every live child, wait up to timeout_s each, kill the rest; returns the killed."""
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    killed = []
    for name, p in procs.items():
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            killed.append(name)
    return killed


def _plain(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

"""`boardlens up`: the three services as separate processes on loopback, with live progress.

Writes `<run>/config.yaml` (all three resolved sections, also what the children read),
starts evaluator, trainer and producer (the producer waits for both consumers), shows one
progress line scraped from their /metrics, and stops after --tokens (end of stream flows
producer -> trainer -> evaluator) or on Ctrl-C (SIGTERM to every child). Then it prints the
final table from `<run>/final_metrics.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from boardlens.atomic import write_text
from boardlens.progress import StatusLine
from boardlens.services.config import (
    BUNDLED_MODELS,
    EvaluatorConfig,
    ProducerConfig,
    TrainerConfig,
    resolve,
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


def build_configs(config_file: str | None, run_dir: str, tokens: int, base_port: int,
                  game="othello", model=None, source=None, label_workers=None, saes=(), d_sae=None,
                  batch_size=None, steps=None, lr=None, train_games=None, test_games=None,
                  device=None) -> dict:
    """Resolve the three configs for a loopback run; flags given to `up` win over the file.

    Without a config file, `up` is tuned for a short run on a laptop: lr 1e-3 with a
    100-step warmup (the paper's 3e-4 and 1000 steps suit its 36k-step runs), snapshots
    every 50 steps, one torch thread per process on small machines.
    """
    ports = list(range(base_port, base_port + 6)) if base_port else free_ports(6)
    ep = [f"tcp://127.0.0.1:{p}" for p in ports[:3]]
    batch = batch_size or 2048
    # Three processes share the cores: oversubscribed torch threads spin and slow everyone.
    ncpu = os.cpu_count() or 2
    threads = None if config_file else {"producer": 1, "evaluator": 1, "trainer": max(1, ncpu - 2)}
    th = (lambda name: threads[name]) if threads else (lambda name: None)
    if model is None and game != "othello":  # Othello's bundled model is the config default
        model = BUNDLED_MODELS[game]
    prod = resolve(ProducerConfig, config_file, {
        "model": model, "source": source, "label_workers": label_workers, "device": device,
        "bind": ep[0], "bind_lossy": ep[1], "max_tokens": tokens,
        "wait_consumers": 1, "wait_lossy_consumers": 1, "metrics_port": ports[3],
        "threads": th("producer")})
    train = resolve(TrainerConfig, config_file, {
        "connect": ep[0], "snapshot_bind": ep[2], "run_dir": run_dir, "saes": tuple(saes) or None,
        "d_sae": d_sae, "batch_size": batch, "device": device, "metrics_port": ports[4],
        "buffer_activations": max(16 * batch, 30_000),
        "steps": steps or max(1, tokens // batch) if tokens else steps,
        "lr": lr or (1e-3 if not config_file else None),
        "warmup_steps": 100 if not config_file else None, "snapshot_every": 50 if not config_file else None,
        "threads": th("trainer"), "resume": "never"})  # `up` always starts a run afresh
    ev = resolve(EvaluatorConfig, config_file, {
        "connect": ep[1], "snapshots": ep[2], "run_dir": run_dir, "train_games": train_games,
        "test_games": test_games, "metrics_port": ports[5], "threads": th("evaluator"),
        "model": prod.model})  # the same LM: its MLP neurons and floor SAEs are references
    return {"producer": prod, "trainer": train, "evaluator": ev}


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from a /metrics endpoint ({} if unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _sum(samples: dict, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def progress_line(cfgs: dict, t0: float, last: dict) -> str:
    """One status line; `last` keeps each service's latest scrape once it has exited."""
    for name in SERVICES:
        last[name] = scrape(cfgs[name].metrics_port) or last.get(name, {})
    p, t, e = last["producer"], last["trainer"], last["evaluator"]
    tokens = _sum(p, "boardlens_producer_tokens_total")
    parts = [f"{time.time() - t0:5.0f}s", f"tokens {tokens:,.0f} ({tokens / max(time.time() - t0, 1e-9):,.0f}/s)"]
    steps = {dict(k[1]).get("sae"): v for k, v in t.items() if k[0] == "boardlens_trainer_steps_total"}
    if steps:
        parts.append(f"step {int(max(steps.values()))}")
    for (name, labels), v in sorted(t.items()):
        lab = dict(labels)
        if name == "boardlens_trainer_loss" and lab.get("term") == "loss":
            l0 = t.get(("boardlens_trainer_l0", (("sae", lab["sae"]),)), float("nan"))
            parts.append(f"{lab['sae']}: loss {v:.3f} L0 {l0:.1f}")
    cov = [v for (n, _), v in e.items() if n == "boardlens_evaluator_coverage"]
    rec = [v for (n, _), v in e.items() if n == "boardlens_evaluator_reconstruction"]
    if cov:
        parts.append(f"best cov {max(cov):.3f} rec {max(rec):.3f}")
    refs = {dict(k[1])["reference"]: v for k, v in e.items()
            if k[0] == "boardlens_evaluator_reference_reconstruction" and dict(k[1]).get("family") == "average"}
    if refs:  # the floor and ceiling the SAEs' reconstruction stands between
        parts.append("rec " + " ".join(f"{n} {v:.3f}" for n, v in sorted(refs.items())))
    games = _sum(e, "boardlens_evaluator_eval_set_games")
    if not cov:
        parts.append(f"eval set {games:.0f} games")
    return " | ".join(parts)


STALL_AFTER_S = 180.0


class StallWatch:
    """Tracks the trainer's step counter; `stalled(s)` once it has not moved for s seconds."""

    def __init__(self, port: int) -> None:
        self.port, self.steps, self.since = port, -1.0, time.monotonic()

    def stalled(self, after_s: float) -> bool:
        steps = _sum(scrape(self.port), "boardlens_trainer_steps_total")
        if steps != self.steps:
            self.steps, self.since = steps, time.monotonic()
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
    final = json.loads(path.read_text())
    latest, refs = final.get("saes", {}), final.get("references", {})
    if not latest:
        return "(no SAE was evaluated)"
    ref_names = sorted(refs, key=lambda n: next((i for i, p in enumerate(REFERENCE_ORDER) if n.startswith(p)), 9))
    rows = {**{n: latest[n] for n in sorted(latest)}, **{f"[{n}]": refs[n] for n in ref_names}}
    groups = list(next(iter(latest.values())).get("averages", {}))

    def num(r: dict, key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "-"

    summary = _table(
        ["sae / [reference]", "step", "L0", "FVE", *[f"{g} {m}" for g in groups for m in ("cov", "rec")]],
        [[n, str(r.get("step", "-")), num(r, "l0", ".1f"), num(r, "var_explained", ".3f"),
          *[f"{r['averages'][g][m]:.3f}" for g in groups for m in ("coverage", "reconstruction")]]
         for n, r in rows.items()])
    fams = list(next(iter(latest.values()))["families"])
    per_family = _table(
        ["cov / rec", *rows],
        [[f, *[f"{r['families'][f]['coverage']:.3f} / {r['families'][f]['reconstruction']:.3f}"
               for r in rows.values()]] for f in fams])
    return summary + "\n\n" + per_family


def run(config_file=None, tokens=2_000_000, run_dir=None, quiet=False, base_port=0, **flags) -> int:
    run_path = Path(run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    run_path.mkdir(parents=True, exist_ok=True)
    try:
        cfgs = build_configs(config_file, str(run_path), tokens, base_port, **flags)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg_file = run_path / "config.yaml"
    write_text(cfg_file, yaml.safe_dump({k: _plain(dataclasses.asdict(v)) for k, v in cfgs.items()}, sort_keys=True))
    (run_path / "logs").mkdir(exist_ok=True)
    print(f"boardlens up: run folder {run_path}, config {cfg_file}", flush=True)
    commands = {"evaluator": "evaluate", "trainer": "train", "producer": "produce"}
    procs = {name: spawn(commands[name], ["--config", str(cfg_file)], run_path / "logs" / f"{name}.log")
             for name in SERVICES}
    interrupted = {"now": False}

    def on_signal(signum, _frame):
        interrupted["now"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t0, code, last = time.time(), 0, {}
    watch = StallWatch(cfgs["trainer"].metrics_port)
    bar = StatusLine(every_s=10.0)
    try:
        while not interrupted["now"]:
            failed = [n for n, p in procs.items() if p.poll() not in (None, 0)]
            if failed:
                bar.end()
                print(f"error: {', '.join(failed)} exited with an error; see {run_path / 'logs'}", file=sys.stderr)
                code = 1
                break
            if all(p.poll() is not None for p in procs.values()):
                break
            if procs["producer"].poll() == 0 and watch.stalled(STALL_AFTER_S):
                bar.end()
                print(f"error: the producer has finished but the trainer made no progress for "
                      f"{STALL_AFTER_S:.0f} s (end of stream lost?); stopping. See {run_path / 'logs'}",
                      file=sys.stderr)
                code = 1
                break
            if not quiet:
                bar.show(progress_line(cfgs, t0, last)[:200])
            time.sleep(1.0)
    finally:
        bar.end()
        for name in stop_processes(procs, timeout_s=60):
            print(f"{name} did not stop within 60 s; killed it", file=sys.stderr)
        for s, h in old.items():
            signal.signal(s, h)
    bar.end()
    print(final_table(run_path), flush=True)
    print(f"run folder: {run_path} (config.yaml, checkpoints/, train.jsonl, metrics.jsonl, logs/)")
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

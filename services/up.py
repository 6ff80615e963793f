"""`boardlens up`: the three services as separate processes on loopback, with live progress.

Settings follow one rule: built-in defaults < `up`'s small-machine defaults < --config file <
BOARDLENS_<SERVICE>_* environment < the flags given. Writes `<run>/config.yaml` (all three
resolved sections, each value with where it came from; what the children read, with those
environment variables taken out of their environment, so they run exactly that), starts evaluator, trainer and producer (the producer waits for both consumers), shows one
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

from boardlens.atomic import write_text
from boardlens.layout import shard_folder
from boardlens.progress import Progress
from boardlens.services.common import EXIT_INCOMPLETE
from boardlens.services.config import (
    DEFAULT_GAME,
    RUNS_DIR,
    EvaluatorConfig,
    ProducerConfig,
    TrainerConfig,
    bundled_model,
    env_prefix,
    merge,
    user_layers,
)
from boardlens.services.status import (
    EvaluatorStatus,
    ProducerStatus,
    ServiceStatus,
    TrainerStatus,
    read_status,
    status_path,
)

SERVICES = ("evaluator", "trainer", "producer")  # start order: the producer waits for the consumers
SECTIONS_ORDER = ("producer", "trainer", "evaluator")


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


UP_SAES = ("batch_topk:k=32,normalize=true", "p_anneal:penalty=0.05,normalize=true",
           "standard:penalty=0.05,normalize=true")
"""`up`'s sweep unless a file, the environment or --saes names one: the kind that read the board
best in the recipe screening (scripts/sae_screen.py), beside the paper's p-anneal and its
Standard baseline. Normalised: a trained model's residual is far from unit norm, and starting
losses ~50x larger slow a short run."""
UP_TOKENS = 2_000_000
"""Tokens `up` streams (over all producers) unless --tokens or producer.max_tokens says otherwise."""


def up_defaults(ncpu: int) -> dict[str, dict]:
    """`up`'s small-machine defaults: above the built-in ones, below file, environment and flags.

    A short run on a laptop: lr 1e-3 with a 100-step warmup (the paper's 3e-4 and 1000 steps suit
    its 36k-step runs), small batches of 256 (a short run is short of steps, not of rows: 1M
    tokens give ~3,900 steps), activations normalised (UP_SAES), snapshots every 400 steps
    (~100k tokens; a tenth of the run when that is shorter), and one torch thread for producer
    and evaluator (three processes share the cores: oversubscribed torch threads spin and slow
    everyone)."""
    return {"producer": {"threads": 1},
            "trainer": {"saes": UP_SAES, "batch_size": 256, "lr": 1e-3, "warmup_steps": 100,
                        "snapshot_every": 400, "threads": max(1, ncpu - 2)},
            "evaluator": {"threads": 1}}


UNSET = ("default", "up")  # sources a derived `up` value may replace: nobody asked for them


class Ports:
    """The loopback ports of one `up` run: data, lossy data, snapshots, then producer / trainer /
    evaluator metrics; then 3 per further producer (data, lossy, metrics) and 2 per further
    shard (snapshots, metrics)."""

    def __init__(self, base_port: int, producers: int, shards: int) -> None:
        n = 6 + 3 * (producers - 1) + 2 * (shards - 1)
        ports = list(range(base_port, base_port + n)) if base_port else free_ports(n)
        more = iter(ports[6:])
        self.producers = [(ports[0], ports[1], ports[3])] + [(next(more), next(more), next(more))
                                                             for _ in range(producers - 1)]
        self.shards = [(ports[2], ports[4])] + [(next(more), next(more)) for _ in range(shards - 1)]
        self.evaluator_metrics = ports[5]


def tcp(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


def build_configs(config_file: str | None, run_dir: str, tokens: int | None, base_port: int,
                  game=None, model=None, source=None, label_workers=None, saes=(), d_sae=None,
                  batch_size=None, steps=None, lr=None, train_games=None, test_games=None,
                  device=None, evaluate=True, producers=1, shards=1, environ=None) -> dict:
    """Resolve the configs of a loopback run by one rule: built-in defaults < `up`'s own
    (`up_defaults`) < the config file < the environment < the flags given (None = not given);
    then `up`'s wiring (endpoints, ports, run folder, status folders), which connects the
    processes and is no setting. evaluate=False: producer and trainer only.

    -> {service: config (instance 0), "instances": {service: [flags of instance 1..]},
        "sources": {service: {field: default|up|file|environment|flag|wiring}}}.
    """
    if producers < 1 or shards < 1:
        raise ValueError("--producers and --shards must be >= 1")
    ports = Ports(base_port, producers, shards)
    defaults = up_defaults(os.cpu_count() or 2)
    if model is None and game not in (None, DEFAULT_GAME):  # --game picks that game's bundled model
        model = bundled_model(game)
    given = {"producer": {"model": model, "source": source, "label_workers": label_workers, "device": device,
                          "max_tokens": None if tokens is None else -(-tokens // producers)},  # each its share
             "trainer": {"saes": tuple(saes), "d_sae": d_sae, "batch_size": batch_size, "steps": steps, "lr": lr,
                         "device": device},
             "evaluator": {"train_games": train_games, "test_games": test_games}}
    defaults["producer"]["max_tokens"] = -(-UP_TOKENS // producers)

    def layered(cls, section, wiring, derive=lambda values, sources: None):
        values, sources = merge(cls, [("up", defaults[section]),
                                      *user_layers(cls, config_file, given[section], environ)])
        derive(values, sources)
        values.update(wiring)
        sources.update(dict.fromkeys(wiring, "wiring"))
        return cls(**values), sources

    prod, prod_src = layered(ProducerConfig, "producer", {
        "bind": tcp(ports.producers[0][0]), "bind_lossy": tcp(ports.producers[0][1]),
        "metrics_port": ports.producers[0][2], "wait_consumers": shards, "wait_lossy_consumers": int(evaluate),
        "status_dir": run_dir if producers == 1 else f"{run_dir}/producer-0",
        **({"name": "p0"} if producers > 1 else {})})
    total_tokens = prod.max_tokens * producers

    def derive_trainer(values, sources):  # sized by the resolved batch size, unless someone set them
        batch = values.get("batch_size", TrainerConfig.batch_size)
        if sources["buffer_activations"] in UNSET:
            values["buffer_activations"], sources["buffer_activations"] = max(16 * batch, 30_000), "up"
        if sources["steps"] in UNSET and total_tokens:
            values["steps"], sources["steps"] = max(1, total_tokens // batch), "up"
        if sources["snapshot_every"] in UNSET and values.get("steps"):  # a short run still draws curves
            every = values.get("snapshot_every", TrainerConfig.snapshot_every)
            values["snapshot_every"] = min(every, max(1, values["steps"] // 10))

    train, train_src = layered(TrainerConfig, "trainer", {
        "connect": ",".join(tcp(p[0]) for p in ports.producers), "snapshot_bind": tcp(ports.shards[0][0]),
        "metrics_port": ports.shards[0][1], "run_dir": run_dir, "resume": "never",  # `up` always starts afresh
        **({"shard": f"0/{shards}"} if shards > 1 else {})}, derive_trainer)
    cfgs = {"producer": prod, "trainer": train, "instances": _instances(prod, ports, run_dir, shards),
            "sources": {"producer": prod_src, "trainer": train_src}}
    if evaluate:
        cfgs["evaluator"], cfgs["sources"]["evaluator"] = layered(EvaluatorConfig, "evaluator", {
            "connect": ",".join(tcp(p[1]) for p in ports.producers),
            "snapshots": ",".join(tcp(s[0]) for s in ports.shards), "run_dir": run_dir,
            "metrics_port": ports.evaluator_metrics,
            "model": prod.model})  # the same LM: its MLP neurons and floor SAEs are references
    return cfgs


def _instances(prod: ProducerConfig, ports: Ports, run_dir: str, shards: int) -> dict[str, list[dict]]:
    """service -> the flags of its instances 1.. (on top of config.yaml's section, instance 0)."""
    return {"producer": [{"seed": prod.seed + i, "name": f"p{i}", "bind": tcp(data), "bind_lossy": tcp(lossy),
                          "metrics_port": port, "status_dir": f"{run_dir}/producer-{i}"}
                         for i, (data, lossy, port) in enumerate(ports.producers) if i],
            "trainer": [{"shard": f"{i}/{shards}", "snapshot_bind": tcp(snap), "metrics_port": port}
                        for i, (snap, port) in enumerate(ports.shards) if i]}


def config_yaml(cfgs: dict) -> str:
    """config.yaml: a section per service, each field on one line with where its value came
    from as a comment (the children read the values; the comments are for people)."""
    out = ["# Resolved by `boardlens up`: defaults < up < file < environment < flag; wiring is up's own."]
    for service in (s for s in SECTIONS_ORDER if s in cfgs):
        out.append(f"{service}:")
        values = dataclasses.asdict(cfgs[service])
        for k in sorted(values):  # JSON is YAML's flow style: every value on its line
            out.append(f"  {k}: {json.dumps(values[k])}  # {cfgs['sources'][service][k]}")
    return "\n".join(out) + "\n"


def settings_line(cfgs: dict) -> str:
    """One line: the fields set by anything but the built-in defaults and the wiring, by source."""
    by_source: dict[str, list[str]] = {}
    for service in (s for s in SECTIONS_ORDER if s in cfgs):
        for k, where in cfgs["sources"][service].items():
            if where not in ("default", "wiring"):
                value = getattr(cfgs[service], k)
                by_source.setdefault(where, []).append(f"{service}.{k}={json.dumps(value) if isinstance(value, tuple) else value}")
    return "; ".join(f"{where}: {', '.join(v)}" for where, v in by_source.items()) or "all defaults"


def progress_line(run_dir: Path, t0: float, producer_dirs=None, trainer_dirs=None) -> str:
    """One status line from the services' status records (a service that has exited left its
    last one). Several producers: their tokens summed; several trainer shards: the slowest
    one's step and every shard's SAEs."""
    ps = [p for d in producer_dirs or [run_dir] if (p := read_status(d, ProducerStatus))]
    ts = [t for d in trainer_dirs or [run_dir] if (t := read_status(d, TrainerStatus))]
    e = read_status(run_dir, EvaluatorStatus)
    elapsed = time.time() - t0
    tokens = sum(p.tokens for p in ps)
    parts = [f"{elapsed:5.0f}s", f"tokens {tokens:,} ({tokens / max(elapsed, 1e-9):,.0f}/s)"]
    if ts and min(t.step for t in ts):
        parts.append(f"step {min(t.step for t in ts)}")
        parts += [f"{name}: loss {s.loss:.3f} L0 {s.l0:.1f}"
                  for name, s in sorted((n, s) for t in ts for n, s in t.saes.items())]
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


def run(config_file=None, tokens=None, run_dir=None, quiet=False, base_port=0, stop_on_shard_loss=False,
        **flags) -> int:
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
    write_text(cfg_file, config_yaml(cfgs))
    (run_path / "logs").mkdir(exist_ok=True)
    children = _children(cfgs, cfgs["instances"])  # process name -> (service, its flags)
    producer_dirs = [Path(flags_.get("status_dir", cfgs["producer"].status_dir))
                     for service, flags_ in children.values() if service == "producer"]
    train = cfgs["trainer"]
    trainer_dirs = [shard_folder(run_path, i, train.shard_index[1]) for i in range(train.shard_index[1])]
    for d in producer_dirs:
        d.mkdir(parents=True, exist_ok=True)
    for service, folder in [("evaluator", run_path), *[("producer", d) for d in producer_dirs],
                            *[("trainer", d) for d in trainer_dirs]]:
        status_path(folder, service).unlink(missing_ok=True)  # an earlier run's would pass for this one's
    print(f"boardlens up: run folder {run_path}, config {cfg_file}; settings: {settings_line(cfgs)}", flush=True)
    commands = {"evaluator": "evaluate", "trainer": "train", "producer": "produce"}
    procs = {name: spawn(commands[service], ["--config", str(cfg_file), *_flags(flags_)],
                         run_path / "logs" / f"{name}.log")
             for name, (service, flags_) in children.items()}
    total = cfgs["producer"].max_tokens * len(producer_dirs)
    seen = _supervise(procs, children, run_path, producer_dirs, trainer_dirs, total, quiet, stop_on_shard_loss)
    if "evaluator" in cfgs:
        print(final_table(run_path), flush=True)
    shard_dirs = dict(zip([n for n, (svc, _) in children.items() if svc == "trainer"], trainer_dirs, strict=True))
    for name, how in seen.lost_shards.items():
        shard = shard_dirs[name]
        status = read_status(shard, TrainerStatus)
        saes = ", ".join(sorted(status.saes)) if status is not None and status.saes else "its SAEs"
        print(f"missing: {name} ({shard.name}) {how}: {saes} stopped at step "
              f"{status.step if status is not None else 0}, before the end of the stream", flush=True)
    metrics = ", metrics.jsonl" if "evaluator" in cfgs else ""
    trained = "checkpoints/, train.jsonl" if len(trainer_dirs) == 1 else "shard-I-of-M/ (checkpoints/, train.jsonl)"
    print(f"run folder: {run_path} (config.yaml, {trained}{metrics}, logs/)")
    return seen.code


def describe_exit(code: int) -> str:
    """How a child ended, in words: a signal by name, the incomplete-stream status, a status."""
    if code < 0:
        try:
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == EXIT_INCOMPLETE:
        return f"ended incomplete (exit {code}: a sender it consumed was lost)"
    return f"exited with status {code}"


class Supervision:
    """What `_supervise` saw: the exit code of `up`, and the trainer shards lost on the way
    (name -> how they ended), which the others outlived."""

    def __init__(self) -> None:
        self.code = 0
        self.lost_shards: dict[str, str] = {}


def _supervise(procs: dict[str, subprocess.Popen], children: dict, run_path: Path, producer_dirs: list[Path],
               trainer_dirs: list[Path], total_tokens: int, quiet: bool, stop_on_shard_loss: bool = False
               ) -> Supervision:
    """Show progress until every child has exited (0), one failed or a trainer stalled (1), or
    Ctrl-C / SIGTERM (0); then stop the children. A trainer shard that fails while another
    shard goes on is lost, not fatal (unless stop_on_shard_loss): the run ends incomplete (4)."""
    interrupted = threading.Event()
    old = {s: signal.signal(s, lambda *_: interrupted.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    t0, out = time.time(), Supervision()
    shards = [n for n, (s, _) in children.items() if s == "trainer"]
    watches = {name: StallWatch(d) for name, d in zip(shards, trainer_dirs, strict=True)}
    producer_procs = [p for n, p in procs.items() if children[n][0] == "producer"]
    bar = Progress(total_tokens or None, "token", every_s=10.0)
    try:
        while not interrupted.is_set():
            # Failures not seen before; EXIT_INCOMPLETE is expected of whoever outlived a lost shard.
            failed = {n: p.returncode for n, p in procs.items() if p.poll() not in (None, 0)
                      and n not in out.lost_shards and not (out.lost_shards and p.returncode == EXIT_INCOMPLETE)}
            for name in [n for n in failed if n in shards and not stop_on_shard_loss]:
                if any(procs[n].poll() in (None, 0) and n not in failed for n in shards):  # another goes on
                    out.lost_shards[name] = describe_exit(failed.pop(name))
                    bar.close()
                    print(f"warning: {name} {out.lost_shards[name]}; the other shards go on (its SAEs stop at "
                          f"their last snapshot; --stop-on-shard-loss stops the run instead). See "
                          f"{run_path / 'logs'}", file=sys.stderr, flush=True)
            if failed:
                bar.close()
                print("error: " + "; ".join(f"{n} {describe_exit(c)}" for n, c in failed.items()) +
                      f"; see {run_path / 'logs'}", file=sys.stderr)
                out.code = 1
                break
            if all(p.poll() is not None for p in procs.values()):
                out.code = EXIT_INCOMPLETE if out.lost_shards else 0
                break
            # A stall is a trainer still running without progress after the producers' end; once it
            # has exited, the evaluator may take minutes over the last snapshots (chess on 2 cores).
            if all(p.poll() == 0 for p in producer_procs) and any(
                    procs[n].poll() is None and w.stalled(STALL_AFTER_S) for n, w in watches.items()):
                bar.close()
                print(f"error: the producer has finished but the trainer made no progress for "
                      f"{STALL_AFTER_S:.0f} s (end of stream lost?); stopping. See {run_path / 'logs'}",
                      file=sys.stderr)
                out.code = 1
                break
            if not quiet:
                streamed = sum(p.tokens for d in producer_dirs if (p := read_status(d, ProducerStatus)))
                bar.show(streamed, progress_line(run_path, t0, producer_dirs, trainer_dirs)[:200])
            time.sleep(1.0)
    finally:
        bar.close()
        for name in stop_processes(procs, timeout_s=60):
            print(f"{name} did not stop within 60 s; killed it", file=sys.stderr)
        for s, h in old.items():
            signal.signal(s, h)
    return out


def _children(cfgs: dict, instances: dict[str, list[dict]]) -> dict[str, tuple[str, dict]]:
    """Process name -> (service, flags beyond config.yaml), evaluator first, producers last (they
    wait for the consumers). One of a service is named after it; several are <service>-<i>."""
    children = {}
    for service in (s for s in SERVICES if s in cfgs):
        flags = [{}, *instances.get(service, [])]  # instance 0 is config.yaml's section
        for i, f in enumerate(flags):
            children[service if len(flags) == 1 else f"{service}-{i}"] = (service, f)
    return children


def _flags(values: dict) -> list[str]:
    return [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def spawn(command: str, args: list[str], log_path: Path) -> subprocess.Popen:
    """Start `boardlens <command> <args>` as a child process logging to log_path.

    The child's environment lacks the BOARDLENS_<SERVICE>_* settings: config.yaml already holds
    them, and a child that read them again over the file would run what config.yaml does not say
    (e.g. a file value beaten by the environment in `up` but not in the child)."""
    prefixes = tuple(env_prefix(s) for s in SECTIONS_ORDER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    with open(log_path, "w") as logf:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "boardlens.services.cli", command, *args],
                                stdout=logf, stderr=subprocess.STDOUT, env=env)


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

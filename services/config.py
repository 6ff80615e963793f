"""Service configs: frozen dataclasses, one docstring per field, validated on creation.

Precedence: defaults < config file (YAML or TOML, a section per service or flat) <
environment (`BOARDLENS_<SERVICE>_<FIELD>`, e.g. BOARDLENS_PRODUCER_BATCH_GAMES=32) < CLI
flags. Field docstrings are read from the source, so `--help` and the docs never drift.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from boardlens.parse import coerce
from boardlens.registry import GAMES

MODELS_DIR = Path(os.environ.get("BOARDLENS_MODELS") or Path(__file__).resolve().parent.parent / "models")
"""The bundled models: <repository>/models, or $BOARDLENS_MODELS (the image: /app/models)."""
RUNS_DIR = os.environ.get("BOARDLENS_RUNS") or "runs"
"""Where run folders go by default: ./runs, or $BOARDLENS_RUNS (the image: a folder in /tmp,
writable on a read-only root)."""
DEFAULT_GAME = "othello"


def bundled_model(game: str) -> str:
    """The folder of the game's bundled model (`Game.bundled_model`, relative to models/)."""
    folder = GAMES[game].bundled_model
    if not folder:
        raise ValueError(f"game {game!r} has no bundled model: give a model")
    return str(MODELS_DIR / folder)


DEFAULT_MODEL = bundled_model(DEFAULT_GAME)


def _endpoint(value: str, what: str) -> None:
    if not value.startswith(("tcp://", "ipc://", "inproc://")):
        raise ValueError(f"{what} must be a ZeroMQ endpoint like tcp://127.0.0.1:5555, got {value!r}")


def endpoints(value: str) -> list[str]:
    """A consumer's comma-separated endpoints (several producers, or trainer shards)."""
    return [e.strip() for e in value.split(",") if e.strip()]


def _connect(value: str, what: str) -> None:
    """Endpoints a consumer connects to: one or more, comma-separated; `dns+tcp://host:port`
    connects to every address of the name (a headless Service: one per pod)."""
    from boardlens.protocol.transport import DNS_SCHEME, split_dns_endpoint

    if not endpoints(value):
        raise ValueError(f"{what} must name at least one endpoint")
    for e in endpoints(value):
        if e.startswith(DNS_SCHEME):
            try:
                split_dns_endpoint(e)
            except ValueError as err:
                raise ValueError(f"{what}: {err}") from None
        else:
            _endpoint(e, what)


def _shard(value: str) -> tuple[int, int]:
    """'i/M' -> (i, M), 0 <= i < M; '' -> (0, 1)."""
    if not value:
        return 0, 1
    i, sep, m = value.partition("/")
    if not (sep and i.strip().isdigit() and m.strip().isdigit() and 0 <= int(i) < int(m)):
        raise ValueError(f"shard must be 'i/M' with 0 <= i < M (e.g. 0/2), got {value!r}")
    return int(i), int(m)


def _positive(obj: Any, *names: str) -> None:
    for n in names:
        if getattr(obj, n) is not None and getattr(obj, n) <= 0:
            raise ValueError(f"{n} must be > 0, got {getattr(obj, n)}")


@dataclass(frozen=True)
class ServiceOptions:
    """Options every service shares: health and transport."""

    health_stall_s: float = 120.0
    """/healthz answers 503 when the service has made no progress for this long."""
    sndhwm_msgs: int = 64
    """Messages queued per subscriber before a lossless send blocks (memory ~ hwm * batch bytes)."""
    send_timeout_ms: int = 30_000
    """How long a lossless send may block on a slow subscriber before it fails."""
    heartbeat_ivl_ms: int = 1000
    """ZMTP heartbeat interval of a lossy publisher (lossless links use TCP keepalive only)."""
    heartbeat_timeout_ms: int = 5000
    """A lossy subscriber silent this long is dropped."""
    curve_keys: str = ""
    """Folder of CURVE keys from `boardlens keys generate` ('env': from BOARDLENS_CURVE_*
    variables): every socket is encrypted and publishers accept only authorised clients."""
    insecure: bool = False
    """Allow binding a non-loopback address without curve_keys (anyone who reaches the port
    can read the stream and inject messages)."""
    metrics_host: str = "127.0.0.1"
    """Address of /metrics and /healthz (0.0.0.0 to let a Prometheus on another host scrape)."""
    idle_heartbeat_s: float = 5.0
    """Senders (producers on the data endpoints, trainers on the snapshot endpoint) send a
    heartbeat message after this long without sending anything else."""
    sender_timeout_s: float = 300.0
    """Consumers (trainer, evaluator) declare a sender they have heard gone once it has sent
    nothing, not even a heartbeat, for this long; the stream ends once every sender has ended
    or gone, as incomplete (0 = wait forever). Longer than the longest time one slow lossless
    consumer may block a shared producer (it blocks that producer's heartbeats too)."""

    def _check_liveness(self) -> None:
        _positive(self, "health_stall_s", "idle_heartbeat_s")
        if self.sender_timeout_s < 0 or 0 < self.sender_timeout_s < 2 * self.idle_heartbeat_s:
            raise ValueError(f"sender_timeout_s must be 0 or >= 2 x idle_heartbeat_s ({self.idle_heartbeat_s}), "
                             f"got {self.sender_timeout_s}")

    def _check_exposure(self, *binds: str) -> None:
        from boardlens.protocol.security import is_loopback

        exposed = [b for b in binds if not is_loopback(b)]
        if exposed and not self.curve_keys and not self.insecure:
            raise ValueError(f"binding {', '.join(exposed)} beyond loopback needs curve_keys (make them with "
                             "`boardlens keys generate DIR`) or an explicit insecure: true")


@dataclass(frozen=True)
class ProducerConfig(ServiceOptions):
    model: str = DEFAULT_MODEL
    """Game LM: a bundled folder, a HF GPT-2 folder, a nanoGPT .pt or a TransformerLens .pth."""
    layer: int = -1
    """Block whose output is streamed (0-based); -1 = the model's default SAE layer."""
    device: str = "auto"
    """'auto' (CUDA when present), 'cpu' or 'cuda[:i]'."""
    dtype: str = "float32"
    """dtype of the forward (and of the activations on the wire, unless wire_dtype says
    otherwise): float32, bfloat16 or float16."""
    wire_dtype: str = ""
    """Activations on the wire: '' (the forward's dtype), float32, bfloat16 or float16.
    bfloat16 halves the bytes; the batch header declares it and trainers accumulate in fp32."""
    name: str = ""
    """This producer's name in its messages (meta 'src'), which lets consumers of several
    producers track each stream; stable across restarts, distinct between producers ('' =
    host name and lossless port, which is both)."""
    batch_games: int = 0
    """Games per message; 0 = about 4k tokens (Othello 64 games of 59, chess 16 of 256)."""
    source: str = "random"
    """Chess games: 'random', 'stockfish[:nodes=16-256,opening=0-8]' or 'pgn:PATH' (.pgn or
    .pgn.zst; the stream ends with the file). Othello: 'random'."""
    label_workers: int = 1
    """Processes generating and labelling chess games (0 = in the producer's own thread)."""
    stockfish: str = ""
    """Stockfish binary for the stockfish source ('' = PATH, then /usr/games/stockfish)."""
    bind: str = "tcp://127.0.0.1:5555"
    """Lossless endpoint (trainers): every subscriber sees every batch."""
    bind_lossy: str = "tcp://127.0.0.1:5556"
    """Lossy endpoint (evaluators): slow subscribers lose batches, never slow the producer."""
    wait_consumers: int = 0
    """Lossless subscribers to wait for before streaming."""
    wait_lossy_consumers: int = 0
    """Lossy subscribers to wait for before streaming."""
    wait_timeout_s: float = 120.0
    """Give up waiting for subscribers after this long: an error (exit 1), nothing is sent."""
    max_tokens: int = 0
    """Stop after streaming this many tokens and send an end-of-stream message (0 = forever)."""
    blocked_unhealthy_s: float = 120.0
    """/healthz turns unhealthy (503, with the reason) once one send has been blocked this long
    by a lossless subscriber that does not read; boardlens_producer_send_blocked_now_seconds."""
    drain_timeout_s: float = 600.0
    """On exit, how long batches still queued for slow lossless subscribers may take to leave
    (a full queue is sndhwm_msgs batches: minutes of a slow trainer's work)."""
    seed: int = 0
    """Seed of the game generator (same seed, same games and game ids)."""
    status_dir: str = ""
    """Folder of producer_status.json, the typed progress record watchers such as `up` read
    ('' = none)."""
    state_file: str = ""
    """Where the stream's progress is kept (epoch, seq, next game id, tokens) so that a
    restart continues it instead of replaying it ('' = none: a restart is a new stream)."""
    threads: int = 0
    """torch intra-op threads (0 = torch's default)."""
    metrics_port: int = 9101
    """Port of /metrics and /healthz (0 = none)."""

    def __post_init__(self) -> None:
        _endpoint(self.bind, "bind")
        _endpoint(self.bind_lossy, "bind_lossy")
        self._check_exposure(self.bind, self.bind_lossy)
        _positive(self, "sndhwm_msgs", "send_timeout_ms", "wait_timeout_s", "blocked_unhealthy_s")
        self._check_liveness()
        if self.batch_games < 0 or self.label_workers < 0:
            raise ValueError("batch_games and label_workers must be >= 0")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.wire_dtype not in ("", "float32", "bfloat16", "float16"):
            raise ValueError(f"wire_dtype must be '', float32, bfloat16 or float16, got {self.wire_dtype!r}")
        if min(self.max_tokens, self.wait_consumers, self.wait_lossy_consumers, self.drain_timeout_s) < 0:
            raise ValueError("max_tokens, wait_* and drain_timeout_s must be >= 0")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu or cuda[:i], got {self.device!r}")


@dataclass(frozen=True)
class TrainerConfig(ServiceOptions):
    connect: str = "tcp://127.0.0.1:5555"
    """Producers' lossless endpoints, comma-separated (every batch of every producer is
    trained); `dns+tcp://host:port` = every address of a headless Service, re-resolved."""
    snapshot_bind: str = "tcp://127.0.0.1:5557"
    """Where SAE snapshots are published for evaluators."""
    run_dir: str = f"{RUNS_DIR}/default"
    """Run folder: checkpoints/, train.jsonl, config.json (a shard's in <run_dir>/shard-I-of-M)."""
    shard: str = ""
    """'I/M': train only every M-th SAE of the sweep, starting at the I-th (0-based), so that M
    trainer processes share one sweep; each sees the whole stream ('' = the whole sweep)."""
    saes: tuple[str, ...] = ("standard:penalty=0.05", "p_anneal:penalty=0.05")
    """Trainer specs `kind[:key=value,...]` (kinds: standard, p_anneal, gated, gated_anneal, topk,
    batch_topk); a value may be a grid `a|b` or `lo..hi/n`. All train on the same batches."""
    d_sae: int | None = None
    """Dictionary size of every SAE whose spec does not set it (none: each kind's default,
    `boardlens sae options`)."""
    penalty: float | None = None
    """Sparsity penalty of every SAE that takes one and whose spec does not set it."""
    k: int | None = None
    """Active latents per row of every TopK-family SAE whose spec does not set it."""
    lr: float | None = None
    """Learning rate of every SAE whose spec does not set it."""
    warmup_steps: int | None = None
    """LR warmup steps of every SAE whose spec does not set it."""
    recon: str = "auto"
    """Reconstruction loss of every SAE whose spec does not set it: 'l2' (unsquared, paper
    era), 'mse' (squared) or 'auto' (each kind's default)."""
    batch_size: int = 8192
    """Activations per SAE step."""
    buffer_activations: int = 60_000
    """Shuffle buffer size; batches are drawn once at least half of it is unread."""
    steps: int = 36_621
    """Training length in steps (the p-anneal schedule spans it); the trainer stops there."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (also written at the end and on SIGTERM)."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept in <run_dir>/checkpoints (older ones are deleted)."""
    resume: str = "auto"
    """'auto': continue from the newest checkpoint in run_dir if there is one; 'require': fail
    without one; 'never': start fresh (old checkpoints are replaced)."""
    stop_grace_s: float = 25.0
    """On SIGTERM: stop at the next step boundary, checkpoint, exit; a hard exit after this many
    seconds (keep it under the pod's terminationGracePeriodSeconds)."""
    snapshot_every: int = 100
    """Steps between SAE snapshots sent to evaluators."""
    log_every: int = 10
    """Steps between lines of train.jsonl."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda[:i]'."""
    threads: int = 0
    """torch intra-op threads (0 = torch's default)."""
    metrics_port: int = 9102
    """Port of /metrics and /healthz (0 = none)."""

    def __post_init__(self) -> None:
        _connect(self.connect, "connect")
        _endpoint(self.snapshot_bind, "snapshot_bind")
        self._check_exposure(self.snapshot_bind)
        _shard(self.shard)
        _positive(self, "d_sae", "k", "lr", "batch_size", "steps", "checkpoint_every", "snapshot_every",
                  "log_every", "keep_checkpoints", "stop_grace_s")
        self._check_liveness()
        if not self.saes:
            raise ValueError("saes must name at least one trainer spec")
        if self.buffer_activations < 2 * self.batch_size:
            raise ValueError(f"buffer_activations ({self.buffer_activations}) must be >= 2 x "
                             f"batch_size ({self.batch_size})")
        if self.recon not in ("auto", "l2", "mse"):
            raise ValueError(f"recon must be 'auto', 'l2' or 'mse', got {self.recon!r}")
        if self.resume not in ("auto", "require", "never"):
            raise ValueError(f"resume must be 'auto', 'require' or 'never', got {self.resume!r}")
        from boardlens.sae.sweep import expand_specs

        specs = expand_specs(self.saes)
        for spec in specs:  # a bad spec or default fails here, with the spec in the message
            spec.options_with(self.sae_defaults())
        i, m = _shard(self.shard)
        if m > len(specs):
            raise ValueError(f"shard {self.shard}: the sweep has {len(specs)} SAEs, fewer than {m} shards")

    @property
    def shard_index(self) -> tuple[int, int]:
        """(I, M) of `shard`; (0, 1) for the whole sweep."""
        return _shard(self.shard)

    @property
    def shard_dir(self) -> str:
        """Where this process keeps its checkpoints, train.jsonl, config and status: run_dir,
        or <run_dir>/shard-I-of-M for a shard (shards never write the same file)."""
        from boardlens.layout import shard_folder

        return str(shard_folder(self.run_dir, *self.shard_index))

    def sae_defaults(self) -> dict:
        """Sweep-wide option values (None = each trainer kind's own default)."""
        return {"d_sae": self.d_sae, "penalty": self.penalty, "k": self.k, "lr": self.lr,
                "warmup_steps": self.warmup_steps, "recon": None if self.recon == "auto" else self.recon}


@dataclass(frozen=True)
class EvaluatorConfig(ServiceOptions):
    connect: str = "tcp://127.0.0.1:5556"
    """Producers' lossy endpoints, comma-separated or dns+tcp:// (never slows a producer)."""
    snapshots: str = "tcp://127.0.0.1:5557"
    """Trainers' snapshot endpoints, comma-separated or dns+tcp:// (one per trainer shard);
    the evaluator finishes when every one of them has sent its end."""
    run_dir: str = f"{RUNS_DIR}/default"
    """Run folder: metrics.jsonl and final_metrics.json are written here."""
    train_games: int = 1000
    """Games in the train split (statistics, coverage); the paper's 1000."""
    test_games: int = 1000
    """Games in the test split (board reconstruction, loss recovered); the paper's 1000."""
    references: bool = True
    """Score the floor and ceiling references (linear probe, MLP neurons, random SAE, SAE on the
    random-init model) once per eval set, beside the SAEs."""
    model: str = ""
    """The producer's game LM (same file): enables loss recovered, the MLP-neuron reference and,
    when the model folder has a floor/ of SAEs trained on its random-init control, the
    random_init_sae one."""
    describe_every: int = 4
    """Describe every latent of a snapshot (best BSP, FADE scores) at its 1st, then every Nth
    evaluation and at the last one (0 = never): slower than coverage, so less often."""
    describe_faithful_latents: int = 0
    """Latents per description whose faithfulness is measured (needs --model; 0 = none)."""
    threads: int = 0
    """torch intra-op threads (0 = torch's default)."""
    metrics_port: int = 9103
    """Port of /metrics and /healthz (0 = none)."""

    def __post_init__(self) -> None:
        _connect(self.connect, "connect")
        _connect(self.snapshots, "snapshots")
        _positive(self, "train_games", "test_games")
        self._check_liveness()
        if self.describe_every < 0 or self.describe_faithful_latents < 0:
            raise ValueError("describe_every and describe_faithful_latents must be >= 0")


SECTIONS = {"producer": ProducerConfig, "trainer": TrainerConfig, "evaluator": EvaluatorConfig}


def _coerce(cls: type, name: str, value: Any) -> Any:
    """A file/env/CLI value -> the field's type, by boardlens.parse.coerce's one rule."""
    return coerce(value, get_type_hints(cls)[name], name)


def read_file(path: str | Path, section: str) -> dict:
    """Read a YAML or TOML config file; takes `[section]` if present, else the top level."""
    p = Path(path)
    text = p.read_text()
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{p}: cannot parse config ({e})") from e
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a config file must hold a mapping")
    if section in data and isinstance(data[section], dict):
        data = data[section]
    return {k: v for k, v in data.items() if k not in SECTIONS}


Layer = tuple[str, dict]
"""(where the values come from, {field: value}): one level of the precedence."""


def env_prefix(section: str) -> str:
    return f"BOARDLENS_{section.upper()}_"


def section_of(cls: type) -> str:
    return next(k for k, v in SECTIONS.items() if v is cls)


def user_layers(cls: type, file: str | None = None, cli: dict | None = None,
                environ: dict | None = None) -> list[Layer]:
    """The user's levels, lowest first: the config file, the environment, then the flags given
    (cli entries that are None or () were not given)."""
    section = section_of(cls)
    env = os.environ if environ is None else environ
    prefix = env_prefix(section)
    return [("file", read_file(file, section) if file else {}),
            ("environment", {k[len(prefix):].lower(): v for k, v in env.items() if k.startswith(prefix)}),
            ("flag", {k: v for k, v in (cli or {}).items() if v is not None and v != ()})]


def merge(cls: type, layers: list[Layer]) -> tuple[dict[str, Any], dict[str, str]]:
    """Apply layers in order (later wins) over the dataclass defaults, coercing each value to its
    field's type. -> (the values set, {field: the name of the layer that set it}); a field no
    layer sets keeps its default (source 'default')."""
    section = section_of(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for where, layer in layers:
        unknown = set(layer) - names
        if unknown:
            raise ValueError(f"unknown {section} option(s){'' if where == 'flag' else f' in the {where}'}: "
                             f"{sorted(unknown)}")
        values.update({k: _coerce(cls, k, v) for k, v in layer.items()})
        sources.update(dict.fromkeys(layer, where))
    return values, {n: sources.get(n, "default") for n in sorted(names)}


def resolve(cls: type, file: str | None = None, cli: dict | None = None,
            environ: dict | None = None) -> Any:
    """defaults < file < environment < cli (cli entries that are None are ignored)."""
    return cls(**merge(cls, user_layers(cls, file, cli, environ))[0])


def to_json(cfg: Any) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


__all__ = ["ProducerConfig", "TrainerConfig", "EvaluatorConfig", "resolve", "merge", "user_layers",
           "to_json", "read_file"]

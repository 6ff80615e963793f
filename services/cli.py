"""The `boardlens` command. Each command only builds its config and calls `run(cfg)`.

Options are generated from the config dataclasses (name, type, default, docstring), so
every config field is a flag and `--help` always tells the truth.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import get_type_hints

import click

from boardlens.atomic import write_json
from boardlens.parse import field_docs, optional_base
from boardlens.registry import GAMES
from boardlens.services.config import (
    DEFAULT_GAME,
    RUNS_DIR,
    EvaluatorConfig,
    ProducerConfig,
    TrainerConfig,
    resolve,
)


def _options_from(cls: type, skip: tuple[str, ...] = ()):
    """Decorator adding one --flag per dataclass field (defaults shown, None = not given)."""
    hints = get_type_hints(cls)
    docs = field_docs(cls)

    def decorate(fn):
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip:
                continue
            flag = "--" + f.name.replace("_", "-")
            hint = optional_base(hints[f.name])[0]  # a flag given is a value; absent is the default
            if hint == tuple[str, ...]:
                fn = click.option(flag, f.name, multiple=True, type=str,
                                  help=f"{docs.get(f.name, '')} Repeatable. [default: {'; '.join(f.default)}]")(fn)
            else:
                fn = click.option(flag, f.name, type=hint, default=None,
                                  help=f"{docs.get(f.name, '')}" + ("" if f.default is None else f" [default: {f.default}]"))(fn)
        return fn

    return decorate


_config_file = click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                            help="YAML or TOML config file (a [producer]/[trainer]/[evaluator] section or flat).")


def _resolve(cls, config_file, options):
    try:
        return resolve(cls, config_file, options)
    except ValueError as e:
        raise click.UsageError(str(e)) from e


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="boardlens", prog_name="boardlens")
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.",
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False))
def main(log_level: str) -> None:
    """BoardLens: stream game-LM activations, train SAEs online, measure them live.

    Precedence of settings: defaults < --config file < BOARDLENS_<SERVICE>_<FIELD> environment
    variables < flags.
    """
    from boardlens.services.common import setup_logging

    setup_logging(log_level.upper())


@main.command()
@_config_file
@_options_from(ProducerConfig)
def produce(config_file, **options):
    """Run a game LM over generated games and stream activations + board labels."""
    from boardlens.services import producer
    from boardlens.services.common import StartupError

    try:
        producer.run(_resolve(ProducerConfig, config_file, options))
    except StartupError as e:
        raise click.ClickException(str(e)) from e


@main.command()
@_config_file
@_options_from(TrainerConfig)
def train(config_file, **options):
    """Train a sweep of SAEs online from the producer's stream (resumes from its last checkpoint)."""
    from boardlens.services import trainer
    from boardlens.services.common import StartupError

    try:
        sys.exit(trainer.run(_resolve(TrainerConfig, config_file, options)))
    except StartupError as e:
        raise click.ClickException(str(e)) from e


@main.command()
@_config_file
@_options_from(EvaluatorConfig)
def evaluate(config_file, **options):
    """Evaluate SAE snapshots live: coverage, board reconstruction, L0, variance explained."""
    from boardlens.services import evaluator
    from boardlens.services.common import StartupError

    try:
        sys.exit(evaluator.run(_resolve(EvaluatorConfig, config_file, options)))
    except StartupError as e:
        raise click.ClickException(str(e)) from e


@main.command()
@_config_file
@click.option("--tokens", type=int, default=None,
              help="Tokens to stream before stopping, over all producers (0 = until Ctrl-C) [default: 2000000 in up].")
@click.option("--run-dir", default=None, help="Run folder [default: $BOARDLENS_RUNS or runs/, then <timestamp>].")
@click.option("--game", type=click.Choice(GAMES.names()), default=None,
              help="Picks the bundled model (models/<game>-gpt) when --model is not given [default: othello].")
@click.option("--model", default=None, help="Model folder or checkpoint; its vocabulary decides the game.")
@click.option("--source", default=None, help="Chess game source: random, stockfish[:...], pgn:PATH [default: random].")
@click.option("--label-workers", type=int, default=None, help="Chess labelling processes [default: 1].")
@click.option("--saes", "saes", multiple=True,
              help="Trainer spec, repeatable [default in up: batch_topk k=32 + p_anneal + standard].")
@click.option("--sae", "saes_old", multiple=True, hidden=True, help="Old name of --saes.")
@click.option("--d-sae", type=int, default=None, help="Dictionary size [default: 4096].")
@click.option("--batch-size", type=int, default=None, help="SAE batch size [default: 256 in up].")
@click.option("--steps", type=int, default=None, help="SAE steps (schedule length) [default: from --tokens].")
@click.option("--lr", type=float, default=None, help="SAE learning rate [default: 1e-3 in up].")
@click.option("--train-games", type=int, default=None, help="Eval train-split games [default: 1000].")
@click.option("--test-games", type=int, default=None, help="Eval test-split games [default: 1000].")
@click.option("--device", default=None, help="Producer and trainer device [default: auto].")
@click.option("--base-port", type=int, default=0,
              help="First of 6 consecutive ports, +3 per extra producer, +2 per extra shard (0 = pick free ones).")
@click.option("--producers", type=int, default=1, show_default=True,
              help="Producers, each streaming its own games (seed +i, name p<i>); every shard trains on all of them.")
@click.option("--shards", type=int, default=1, show_default=True,
              help="Trainer processes the sweep is split over (train --shard I/M).")
@click.option("--quiet", is_flag=True, help="No live progress line.")
@click.option("--stop-on-shard-loss", is_flag=True,
              help="Stop the run when a trainer shard fails (default: the others go on; the run ends incomplete, exit 4).")
@click.option("--evaluate/--no-evaluate", default=True, show_default=True,
              help="Run the evaluator (--no-evaluate: train only, no metrics or final table).")
def up(config_file, saes, saes_old, **options):
    """Run producer, trainer and evaluator as separate processes on loopback, with live progress.

    Stops after --tokens or on Ctrl-C, then prints the SAEs' final metrics. Settings: built-in
    defaults < up's small-machine defaults < --config file < environment < the flags given;
    <run>/config.yaml says where each value came from.
    """
    from boardlens.services import up as up_mod

    sys.exit(up_mod.run(config_file=config_file, saes=saes + saes_old, **options))


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--model", required=True, help="The game LM the SAEs read (its game and default layer apply).")
@click.option("--games", default=1000, show_default=True, help="Fresh games per split (train and test).")
@click.option("--layer", type=int, default=None, help="Block whose output the SAEs read [default: the model's].")
@click.option("--seed", default=12_345, show_default=True, help="Seed of the games.")
@click.option("--json", "json_out", default="scores.json", show_default=True, help="Where the records go.")
@click.option("--references/--no-references", default=True, show_default=True,
              help="Also score the floors and ceilings (probe, MLP neurons, random SAE, random-init SAE).")
@click.option("--threads", default=0, show_default=True, help="torch threads (0 = torch's default).")
def score(paths, model, games, layer, seed, json_out, references, threads) -> None:
    """Score saved SAEs (ours, dictionary_learning, SAELens, a run folder) offline, as the live
    evaluator does, on fresh games of the model's game."""
    from boardlens.services.common import set_threads
    from boardlens.services.score import run

    set_threads(threads)
    try:
        run(list(paths), model, games, layer, seed, json_out, references)
    except ValueError as e:  # a wrong width, layer or game, an unreadable file: one line
        raise click.ClickException(str(e)) from e


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--model", required=True, help="The game LM the SAEs read (its game and default layer apply).")
@click.option("--games", default=1000, show_default=True, help="Fresh games per split (train and test).")
@click.option("--layer", type=int, default=None, help="Block whose output the SAEs read [default: the model's].")
@click.option("--seed", default=12_345, show_default=True, help="Seed of the games and samples.")
@click.option("--json", "json_out", default="descriptions.json", show_default=True, help="Where the records go.")
@click.option("--references/--no-references", default=True, show_default=True,
              help="Also describe the MLP neurons and a random SAE of the same size.")
@click.option("--faithful-latents", default=32, show_default=True,
              help="Latents (drawn from those passing FADE's gate) whose faithfulness is measured.")
@click.option("--prefixes", default=50, show_default=True, help="Natural prefixes per faithfulness test.")
@click.option("--threads", default=0, show_default=True, help="torch threads (0 = torch's default).")
def describe(paths, model, games, layer, seed, json_out, references, faithful_latents, prefixes, threads) -> None:
    """Describe every SAE latent by its best board-state property and score it FADE-style
    (clarity, responsiveness, purity, faithfulness) against the game's ground truth."""
    from boardlens.services.common import set_threads
    from boardlens.services.describe import run

    set_threads(threads)
    try:
        run(list(paths), model, games, layer, seed, json_out, references, faithful_latents, prefixes)
    except ValueError as e:  # a wrong width, layer or game, an unreadable file: one line
        raise click.ClickException(str(e)) from e


@main.command()
@click.argument("sae", type=click.Path(exists=True))
@click.option("--model", required=True, help="The game LM the SAE reads.")
@click.option("--bsp", default=None, help='One BSP by name, e.g. "mine_theirs_empty E5=theirs".')
@click.option("--family", default=None, help="Or the most common BSPs of this board family.")
@click.option("--max-bsps", default=4, show_default=True, help="BSPs steered with --family.")
@click.option("--games", default=500, show_default=True, help="Fresh games per split.")
@click.option("--layer", type=int, default=None, help="Block the SAE reads [default: the model's].")
@click.option("--seed", default=12_345, show_default=True, help="Seed of the games.")
@click.option("--components/--no-components", default=True, show_default=True,
              help="Also scale the raw attention / MLP outputs of every block.")
@click.option("--probes", is_flag=True, help="Also scale the per-BSP linear probes' latents (the oracle dictionary).")
@click.option("--margin", default=2.0, show_default=True, help="Effectiveness hinge margin, nats.")
@click.option("--kl-weight", default=1.0, show_default=True)
@click.option("--l1-weight", default=0.002, show_default=True)
@click.option("--steps", default=150, show_default=True)
@click.option("--pairs", default=128, show_default=True, help="Pairs per BSP (half train, half test).")
@click.option("--json", "json_out", default="steering.json", show_default=True)
@click.option("--threads", default=0, show_default=True, help="torch threads (0 = torch's default).")
def steer(sae, model, bsp, family, max_bsps, games, layer, seed, components, probes, margin, kl_weight, l1_weight,
          steps, pairs, json_out, threads) -> None:
    """Activation scaling: learn one scalar per SAE latent (and per attention / MLP output) that
    makes the model act as if a board-state property did not hold; report flips, KL, movers."""
    from boardlens.interpret.steer import SteerConfig
    from boardlens.services.common import set_threads
    from boardlens.services.steer import run

    set_threads(threads)
    cfg = SteerConfig(margin=margin, kl_weight=kl_weight, l1_weight=l1_weight, steps=steps, pairs=pairs)
    try:
        run(sae, model, bsp, family, max_bsps, games, layer, seed, json_out, components, cfg, probes)
    except ValueError as e:
        raise click.ClickException(str(e)) from e


@main.command()
@click.argument("sae", type=click.Path(exists=True))
@click.option("--model", required=True, help="The game LM the SAE reads.")
@click.option("--out", default="browser", show_default=True, help="Folder for index.html and latents/.")
@click.option("--games", default=500, show_default=True, help="Fresh games per split.")
@click.option("--layer", type=int, default=None, help="Block the SAE reads [default: the model's].")
@click.option("--seed", default=12_345, show_default=True, help="Seed of the games.")
@click.option("--pages", default=200, show_default=True, help="Latent pages written (best description F1 first).")
@click.option("--faithful-latents", default=16, show_default=True, help="Latents whose faithfulness is measured.")
@click.option("--steering", default=None, type=click.Path(exists=True), help="A `boardlens steer` JSON to show.")
@click.option("--threads", default=0, show_default=True, help="torch threads (0 = torch's default).")
def browse(sae, model, out, games, layer, seed, pages, faithful_latents, steering, threads) -> None:
    """Static HTML feature browser: every latent's description and scores, pages with its top
    positions drawn as boards, its activation histogram and steering results."""
    from boardlens.services.browse import run
    from boardlens.services.common import set_threads

    set_threads(threads)
    try:
        run(sae, model, out, games, layer, seed, pages, faithful_latents, steering)
    except ValueError as e:
        raise click.ClickException(str(e)) from e


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", default=None, help="Report folder [default: <first path>/report, or ./report for a file].")
@click.option("--title", default=None, help="Page title [default: from the sources' names].")
def report(paths, out, title) -> None:
    """HTML report (PNG figures, per-family tables) of run folders or `boardlens score` JSON files:
    each SAE over training, the Pareto frontiers against the references, every variant."""
    try:
        from boardlens.report import ReportError, build_report
    except ImportError as e:  # matplotlib is the `report` extra
        raise click.ClickException(f"{e.name or e} is missing: pip install 'boardlens[report]'") from e
    first = Path(paths[0])
    out = out or str(first / "report" if first.is_dir() else Path("report"))
    try:
        click.echo(build_report(list(paths), out, title))
    except ReportError as e:
        raise click.ClickException(str(e)) from e


@main.group()
def lm() -> None:
    """Game language models: train the bundled ones."""


@lm.command("train")
@click.option("--game", default=DEFAULT_GAME, show_default=True, type=click.Choice(GAMES.names()))
@click.option("--run-dir", default=None, help="Run folder [default: $BOARDLENS_RUNS or runs/, then lm-<game>].")
@click.option("--out", default=None, hidden=True, help="Old name of --run-dir.")
@click.option("--steps", default=6000, show_default=True, help="Optimiser steps.")
@click.option("--batch-games", default=128, show_default=True, help="Games per step.")
@click.option("--n-layer", default=6, show_default=True)
@click.option("--n-embd", default=192, show_default=True)
@click.option("--n-head", default=6, show_default=True)
@click.option("--sae-layer", default=4, show_default=True, help="Default streamed block, stored in the model.")
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--warmup-steps", default=200, show_default=True)
@click.option("--schedule", default="cosine", show_default=True, type=click.Choice(["cosine", "wsd"]),
              help="wsd: constant LR, then a linear decay over the last --decay-frac of --steps.")
@click.option("--decay-frac", default=0.2, show_default=True, help="wsd: share of the steps spent decaying.")
@click.option("--checkpoint-every", default=None, type=int, help="Steps between training checkpoints [default: 250].")
@click.option("--ckpt-every", default=None, type=int, hidden=True, help="Old name of --checkpoint-every.")
@click.option("--eval-every", default=500, show_default=True, help="Steps between legality evaluations.")
@click.option("--eval-games", default=500, show_default=True, help="Held-out games per evaluation.")
@click.option("--probe-games", default=200, show_default=True,
              help="Train + test games of the per-layer probe curve at each evaluation (0 = off).")
@click.option("--threads", default=0, show_default=True, help="torch threads (0 = torch's default).")
@click.option("--objective", default="auto", show_default=True, type=click.Choice(["auto", "next", "legal"]),
              help="next: the move played; legal: uniform over the legal moves (Othello; auto picks it).")
@click.option("--compile/--no-compile", default=False, show_default=True, help="torch.compile the model.")
@click.option("--snapshots/--no-snapshots", default=True, show_default=True,
              help="Keep the model at every evaluation in <run-dir>/snapshots/ (learning curves).")
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from <run-dir>/train_state.pt.")
@click.option("--init-from", default="", help="Start from a saved model's weights, step and games seen "
              "(same game and shape; fresh AdamW, LR re-warmed); give another --seed for new games.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda[:i] or auto (CUDA when present).")
@click.option("--bf16/--no-bf16", default=False, show_default=True, help="Forward under bf16 autocast.")
@click.option("--data-workers", default=0, show_default=True,
              help="Processes generating the games (0 = in the trainer; batch i from seed (seed, i)).")
@click.option("--max-minutes", default=0.0, show_default=True,
              help="Stop (evaluate, export, checkpoint) after this many minutes (0 = run to --steps).")
@click.option("--board-head", "board_heads", multiple=True,
              help="Auxiliary board objective LAYER[:weight=W,anneal=F] (repeatable): a linear head on that "
                   "block predicts the board, W beside the LM loss, annealed to 0 over the last F of the steps "
                   "[default W 1.0, F 0.25]; never the SAE layer; not in the exported model.")
def lm_train(resume: bool, run_dir: str | None, out: str | None, checkpoint_every: int | None,
             ckpt_every: int | None, **options) -> None:
    """Train a game LM on freshly generated games (progress bar, checkpoints, resume)."""
    from boardlens.files import BadFile
    from boardlens.lm.train import LMTrainConfig
    from boardlens.lm.train import train as train_lm

    try:
        cfg = LMTrainConfig(run_dir=run_dir or out or f"{RUNS_DIR}/lm-{options['game']}",
                            checkpoint_every=checkpoint_every or ckpt_every or 250, **options)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    try:
        train_lm(cfg, resume=resume)
    except BadFile as e:  # CheckpointError among them
        raise click.ClickException(str(e)) from e


def _load_lm(model: str | None):
    """Any supported checkpoint (default: the bundled Othello model) -> (model, meta)."""
    from boardlens.files import BadFile
    from boardlens.lm.formats import load_any
    from boardlens.services.config import DEFAULT_MODEL

    try:
        return load_any(model or DEFAULT_MODEL)
    except BadFile as e:  # CheckpointError among them
        raise click.ClickException(str(e)) from e


@lm.command("eval")
@click.option("--model", default=None, help="Model folder or checkpoint [default: models/othello-gpt].")
@click.option("--games", default=2000, show_default=True, help="Held-out random games.")
@click.option("--seed", default=12345, show_default=True, help="Seed of the held-out games.")
@click.option("--temperature", default=1.0, show_default=True, help="Chess sampling temperature (0 = greedy).")
def lm_eval(model, games: int, seed: int, temperature: float) -> None:
    """Held-out legality of a game LM's moves.

    Othello: top-1 next-move accuracy at every position. Chess: the fraction of sampled
    continuations (temperature 1, one random move boundary per game) that are legal SAN.
    """
    import inspect

    from boardlens.registry import GAMES

    net, meta = _load_lm(model)
    data = GAMES[meta["game"]].lm_data()
    held_out = data.eval_set(games, seed)
    takes_t = "temperature" in inspect.signature(data.score).parameters  # sampled, not top-1
    score = data.score(net, held_out, **({"temperature": temperature} if takes_t else {}))
    click.echo(f"{meta['game']} {data.score_name} on {games} held-out games (seed {seed}): {score:.4f}")


def _layers(spec: str, n_layer: int) -> list[int]:
    """--layer 'all' | 'N' | 'N,M,...' -> block indices, each checked against the model."""
    try:
        picked = list(range(n_layer)) if spec == "all" else [int(v) for v in spec.split(",")]
    except ValueError as e:
        raise click.UsageError(f"--layer takes N, N,M,... or 'all', got {spec!r}") from e
    if not all(0 <= v < n_layer for v in picked):
        raise click.UsageError(f"--layer must be in 0..{n_layer - 1}")
    return picked


@lm.command("probe")
@click.option("--model", default=None, help="Model folder or checkpoint [default: models/othello-gpt].")
@click.option("--layer", "layers", default=None,
              help="Block(s) whose output is probed: N, N,M,... or 'all' [default: the model's SAE layer].")
@click.option("--train-games", default=1000, show_default=True)
@click.option("--test-games", default=1000, show_default=True)
@click.option("--seed", default=12345, show_default=True, help="Seed of the probed games.")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Also write the figures to this JSON file.")
def lm_probe(model, layers, train_games: int, test_games: int, seed: int, json_out) -> None:
    """How linearly each layer encodes the board, with the evaluator's metrics.

    Per layer: the main family's square accuracy (one multinomial probe per square), then
    coverage and board reconstruction of per-BSP linear probes (the evaluator's ceiling) and
    of the block's MLP neurons (the paper's baseline), on the same held-out games.
    """

    from boardlens.lm.probe import layer_reports, probe_board

    net, meta = _load_lm(model)
    picked = _layers(layers or str(meta.get("sae_layer", 0)), net.config.n_layer)
    out = []
    for rep in layer_reports(net, meta["game"], picked, train_games, test_games, seed):
        acc = probe_board(net, meta["game"], rep.layer, train_games, test_games, seed)
        row = {"layer": rep.layer, "square_accuracy": acc.accuracy, "majority_baseline": acc.baseline,
               "probe": {f: s._asdict() for f, s in rep.probe.items()},
               "mlp_neurons": {f: s._asdict() for f, s in rep.mlp.items()}}
        out.append(row)
        click.echo(f"layer {rep.layer}: {acc.family} square accuracy {acc.accuracy:.4f} (majority {acc.baseline:.4f})"
                   + "".join(f" | {f}: probe cov {rep.probe[f].coverage:.3f} rec {rep.probe[f].reconstruction:.3f},"
                             f" MLP cov {rep.mlp[f].coverage:.3f} rec {rep.mlp[f].reconstruction:.3f}"
                             for f in list(rep.probe)[:2]))
    if json_out:
        write_json(json_out, {"model": model, "game": meta["game"], "train_games": train_games,
                              "test_games": test_games, "seed": seed, "layers": out})


@lm.command("curve")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--layer", "layers", default="all", show_default=True, help="N, N,M,... or 'all'.")
@click.option("--train-games", default=300, show_default=True)
@click.option("--test-games", default=300, show_default=True)
@click.option("--seed", default=12345, show_default=True, help="Seed of the probed games.")
def lm_curve(run_dir: str, layers: str, train_games: int, test_games: int, seed: int) -> None:
    """Learning curve of an `lm train` run: held-out legality and linear-probe board
    reconstruction per layer for every snapshot in RUN_DIR/snapshots (written to curve.json)."""
    import json
    from pathlib import Path

    from boardlens.lm.checkpoint import load_model
    from boardlens.lm.probe import layer_reports

    snaps = sorted(Path(run_dir, "snapshots").glob("step-*"))
    if not snaps:
        raise click.UsageError(f"{run_dir}/snapshots holds no step-* snapshot (lm train --snapshots)")
    path = Path(run_dir, "curve.json")
    done = {r["step"]: r for r in json.loads(path.read_text())} if path.exists() else {}
    for snap in snaps:
        net, meta = load_model(snap)
        if meta["train_steps"] in done:
            continue
        reps = layer_reports(net, meta["game"], _layers(layers, net.config.n_layer), train_games, test_games,
                             seed, mlp=False)
        fam = next(iter(reps[0].probe))
        row = {"step": meta["train_steps"], "tokens": meta["tokens_seen"],
               "legal": meta.get("legal_move_acc", meta.get("legal_move_rate")),
               "family": fam, "probe_reconstruction": {r.layer: r.probe[fam].reconstruction for r in reps},
               "probe_coverage": {r.layer: r.probe[fam].coverage for r in reps}}
        done[row["step"]] = row
        write_json(path, [done[k] for k in sorted(done)], indent=1)
        click.echo(f"step {row['step']:>6} tokens {row['tokens']:>11,} legal {row['legal']:.4f} | {fam} probe rec "
                   + " ".join(f"L{k} {v:.3f}" for k, v in row["probe_reconstruction"].items()))


@main.group()
def keys() -> None:
    """CURVE keys: encryption and an allow-list of clients for every socket."""


@keys.command("generate")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--clients", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Client key pairs (one per consumer lets you revoke one alone); all authorised.")
def keys_generate(folder: str, clients: int) -> None:
    """Write a server key pair, client key pairs and authorized_clients into FOLDER.

    Then give every service `--curve-keys FOLDER` (or, on Kubernetes, the Secret made with
    `kubectl create secret generic boardlens-curve --from-file=FOLDER`). Publishers need
    server.secret and authorized_clients; consumers client.secret and server.public.
    """
    from boardlens.protocol.security import generate

    try:
        paths = generate(folder, clients)
    except (FileExistsError, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo("wrote " + ", ".join(p.name for p in paths) + f" in {folder} (secret files are 0600)")


@main.group()
def sae() -> None:
    """SAE files: export to and import from other libraries' layouts."""


@sae.command("options")
def sae_options() -> None:
    """Every trainer kind and its spec options, with defaults (Markdown)."""
    from boardlens.sae.sweep import options_table

    click.echo(options_table(), nl=False)


@sae.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", required=True, type=click.Choice(["dictionary_learning", "saelens"]))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write.")
def sae_export(checkpoint: str, fmt: str, out: str) -> None:
    """Export a trainer checkpoint (<run>/checkpoints/latest/<name>.safetensors) to another layout."""
    from boardlens.sae.interop import export_sae
    from boardlens.sae.io import load_sae

    try:
        ae, meta = load_sae(checkpoint)
    except ValueError as e:  # a BadFile: it names the file and what is wrong
        raise click.ClickException(str(e)) from e
    click.echo(f"wrote {export_sae(ae, fmt, out, meta)} ({fmt}, {ae.d_in} -> {ae.d_sae} latents)")


@sae.command("floor")
@click.option("--model", default=None, help="The model whose floor is built [default: models/othello-gpt].")
@click.option("--control", default=None, help="Its random-init control [default: <model>-random].")
@click.option("--tokens", type=int, default=1_000_000, show_default=True, help="Tokens to train on.")
@click.option("--saes", "saes", multiple=True, help="Trainer spec, repeatable [default: up's sweep].")
@click.option("--sae", "saes_old", multiple=True, hidden=True, help="Old name of --saes.")
@click.option("--d-sae", type=int, default=None, help="Dictionary size [default: 4096].")
@click.option("--run-dir", default=None, help="Run folder of the training [default: $BOARDLENS_RUNS or runs/, then floor-<model name>].")
def sae_floor(model, control, tokens: int, saes, saes_old, d_sae, run_dir) -> None:
    """Train SAEs on the model's random-init control (`boardlens up` on it) into <model>/floor/.

    The evaluator scores the best of them, on the control's activations at its own eval
    positions, as the random_init_sae reference (the paper's floor).
    """
    import json
    import os
    import shlex
    from pathlib import Path

    from safetensors.torch import load_file

    from boardlens.sae.io import save_tensors
    from boardlens.services import up
    from boardlens.services.config import DEFAULT_MODEL

    model_dir = Path(model or DEFAULT_MODEL)
    control_dir = Path(control or f"{model_dir}-random")
    _, meta = _load_lm(str(control_dir))
    run = Path(run_dir or f"{RUNS_DIR}/floor-{model_dir.name}")
    # Training only: the floor files are the checkpoints; the evaluator that scores them as the
    # random_init_sae reference runs in the user's own `up` (an evaluation here took minutes on chess).
    code = up.run(tokens=tokens, run_dir=str(run), model=str(control_dir), saes=saes + saes_old, d_sae=d_sae,
                  quiet=True, evaluate=False)
    if code:
        raise click.ClickException(f"the training on {control_dir} failed; see {run}/logs")
    floor = model_dir / "floor"
    floor.mkdir(exist_ok=True)
    for st in sorted((run / "checkpoints" / "latest").glob("*.safetensors")):
        info = json.loads(st.with_suffix(".json").read_text())
        # float16 halves the file; the evaluator loads it back as float32 (a floor needs no more).
        save_tensors({k: v.half() if v.is_floating_point() else v for k, v in load_file(str(st)).items()},
                            floor / st.name)
        info.update(control_model=os.path.relpath(control_dir, model_dir), layer=int(meta["sae_layer"]),
                    tokens=tokens, command="boardlens sae floor " + shlex.join(sys.argv[3:]))
        write_json(floor / st.with_suffix(".json").name, info)
        click.echo(f"wrote {floor / st.name}")


if __name__ == "__main__":
    main()

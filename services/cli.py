"""The `boardlens` command. Each command only builds its config and calls `run(cfg)`.

Options are generated from the config dataclasses (name, type, default, docstring), so
every config field is a flag and `--help` always tells the truth.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import get_type_hints

import click

from services.config import EvaluatorConfig, ProducerConfig, TrainerConfig, field_docs, resolve


def _options_from(cls: type, skip: tuple[str, ...] = ()):
    """Decorator adding one --flag per dataclass field (defaults shown, None = not given)."""
    hints = get_type_hints(cls)
    docs = field_docs(cls)

    def decorate(fn):
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip:
                continue
            flag = "--" + f.name.replace("_", "-")
            hint = hints[f.name]
            if hint == tuple[str, ...]:
                fn = click.option(flag, f.name, multiple=True, type=str,
                                  help=f"{docs.get(f.name, '')} Repeatable. [default: {'; '.join(f.default)}]")(fn)
            else:
                fn = click.option(flag, f.name, type=hint, default=None,
                                  help=f"{docs.get(f.name, '')} [default: {f.default}]")(fn)
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
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
def main(log_level: str) -> None:
    """BoardLens: stream game-LM activations, train SAEs online, measure them live.

    Precedence of settings: defaults < --config file < BOARDLENS_<SERVICE>_<FIELD> environment
    variables < flags.
    """
    from services.common import setup_logging

    setup_logging(log_level)


@main.command()
@_config_file
@_options_from(ProducerConfig)
def produce(config_file, **options):
    """Run a game LM over generated games and stream activations + board labels."""
    from services import producer
    from services.common import StartupError

    try:
        producer.run(_resolve(ProducerConfig, config_file, options))
    except StartupError as e:
        raise click.ClickException(str(e)) from e


@main.command()
@_config_file
@_options_from(TrainerConfig)
def train(config_file, **options):
    """Train a sweep of SAEs online from the producer's stream (resumes from its last checkpoint)."""
    from services import trainer
    from services.common import StartupError

    try:
        trainer.run(_resolve(TrainerConfig, config_file, options))
    except StartupError as e:
        raise click.ClickException(str(e)) from e


@main.command()
@_config_file
@_options_from(EvaluatorConfig)
def evaluate(config_file, **options):
    """Evaluate SAE snapshots live: coverage, board reconstruction, L0, variance explained."""
    from services import evaluator

    evaluator.run(_resolve(EvaluatorConfig, config_file, options))


@main.command()
@_config_file
@click.option("--tokens", type=int, default=2_000_000, show_default=True,
              help="Tokens to stream before stopping (0 = until Ctrl-C).")
@click.option("--run-dir", default=None, help="Run folder [default: runs/<timestamp>].")
@click.option("--game", type=click.Choice(["othello", "chess"]), default="othello", show_default=True,
              help="Picks the bundled model (models/<game>-gpt) when --model is not given.")
@click.option("--model", default=None, help="Model folder or checkpoint; its vocabulary decides the game.")
@click.option("--source", default=None, help="Chess game source: random, stockfish[:...], pgn:PATH [default: random].")
@click.option("--label-workers", type=int, default=None, help="Chess labelling processes [default: 1].")
@click.option("--sae", "saes", multiple=True, help="Trainer spec, repeatable [default: standard + p_anneal].")
@click.option("--d-sae", type=int, default=None, help="Dictionary size [default: 4096].")
@click.option("--batch-size", type=int, default=None, help="SAE batch size [default: 2048 in up].")
@click.option("--steps", type=int, default=None, help="SAE steps (schedule length) [default: from --tokens].")
@click.option("--lr", type=float, default=None, help="SAE learning rate [default: 1e-3 in up].")
@click.option("--train-games", type=int, default=None, help="Eval train-split games [default: 200].")
@click.option("--test-games", type=int, default=None, help="Eval test-split games [default: 200].")
@click.option("--device", default=None, help="Producer and trainer device [default: auto].")
@click.option("--base-port", type=int, default=0, help="First of 6 consecutive ports (0 = pick free ones).")
@click.option("--quiet", is_flag=True, help="No live progress line.")
def up(config_file, **options):
    """Run producer, trainer and evaluator as separate processes on loopback, with live progress.

    Stops after --tokens or on Ctrl-C, then prints the SAEs' final metrics.
    """
    from services import up as up_mod

    sys.exit(up_mod.run(config_file=config_file, **options))


@main.group()
def lm() -> None:
    """Game language models: train the bundled ones."""


@lm.command("train")
@click.option("--game", default="othello", show_default=True, type=click.Choice(["othello", "chess"]))
@click.option("--out", default=None, help="Output folder [default: runs/lm-<game>].")
@click.option("--steps", default=6000, show_default=True, help="Optimiser steps.")
@click.option("--batch-games", default=128, show_default=True, help="Games per step.")
@click.option("--n-layer", default=6, show_default=True)
@click.option("--n-embd", default=192, show_default=True)
@click.option("--n-head", default=6, show_default=True)
@click.option("--sae-layer", default=4, show_default=True, help="Default streamed block, stored in the model.")
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--warmup-steps", default=200, show_default=True)
@click.option("--ckpt-every", default=250, show_default=True, help="Steps between training checkpoints.")
@click.option("--eval-every", default=500, show_default=True, help="Steps between legality evaluations.")
@click.option("--eval-games", default=500, show_default=True, help="Held-out games per evaluation.")
@click.option("--threads", default=0, show_default=True, help="torch threads (0 = torch's default).")
@click.option("--objective", default="auto", show_default=True, type=click.Choice(["auto", "next", "legal"]),
              help="next: the move played; legal: uniform over the legal moves (Othello; auto picks it).")
@click.option("--compile/--no-compile", default=False, show_default=True, help="torch.compile the model.")
@click.option("--snapshots/--no-snapshots", default=True, show_default=True,
              help="Keep the model at every evaluation in <out>/snapshots/ (learning curves).")
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from <out>/train_state.pt.")
def lm_train(resume: bool, out: str | None, **options) -> None:
    """Train a game LM on freshly generated games (progress bar, checkpoints, resume)."""
    from boardlens.lm.train import LMTrainConfig
    from boardlens.lm.train import train as train_lm

    try:
        cfg = LMTrainConfig(out=out or f"runs/lm-{options['game']}", **options)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    train_lm(cfg, resume=resume)


def _load_lm(model: str | None):
    """Any supported checkpoint (default: the bundled Othello model) -> (model, meta)."""
    from boardlens.lm.checkpoint import CheckpointError
    from boardlens.lm.formats import load_any
    from services.config import DEFAULT_MODEL

    try:
        return load_any(model or DEFAULT_MODEL)
    except CheckpointError as e:
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
    from boardlens.lm.train import game_data

    net, meta = _load_lm(model)
    data = game_data(meta["game"])
    held_out = data.eval_set(games, seed)
    if meta["game"] == "chess":
        from boardlens.games.chess.lm_data import legal_move_rate

        score = legal_move_rate(net, held_out, temperature=temperature)
    else:
        score = data.score(net, held_out)
    click.echo(f"{meta['game']} {data.score_name} on {games} held-out games (seed {seed}): {score:.4f}")


@lm.command("probe")
@click.option("--model", default=None, help="Model folder or checkpoint [default: models/othello-gpt].")
@click.option("--layer", type=int, default=None, help="Block whose output is probed [default: the model's SAE layer].")
@click.option("--train-games", default=1000, show_default=True)
@click.option("--test-games", default=500, show_default=True)
@click.option("--seed", default=12345, show_default=True, help="Seed of the probed games.")
def lm_probe(model, layer, train_games: int, test_games: int, seed: int) -> None:
    """Linear-probe board accuracy of the main family at one layer (held-out games)."""
    from boardlens.lm.probe import probe_board

    net, meta = _load_lm(model)
    layer = int(meta.get("sae_layer", 0)) if layer is None else layer
    if not 0 <= layer < net.config.n_layer:
        raise click.UsageError(f"--layer must be in 0..{net.config.n_layer - 1}")
    r = probe_board(net, meta["game"], layer, train_games, test_games, seed)
    click.echo(f"{meta['game']} {r.family} linear probe at layer {r.layer}: accuracy {r.accuracy:.4f} "
               f"on {r.test_positions} held-out positions (most-common-class baseline {r.baseline:.4f}; "
               f"{r.train_positions} training positions)")


@main.group()
def sae() -> None:
    """SAE files: export to and import from other libraries' layouts."""


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
    except (ValueError, OSError) as e:
        raise click.ClickException(f"{checkpoint}: {e}") from e
    click.echo(f"wrote {export_sae(ae, fmt, out, meta)} ({fmt}, {ae.d_in} -> {ae.d_sae} latents)")


if __name__ == "__main__":
    main()

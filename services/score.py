"""`boardlens score`: the live evaluator's measurements of saved SAEs, offline.

    boardlens score runs/r1 ~/saes/othello-l5-sae --model models/othello-gpt --games 1000

Plays `games` fresh games per split of the model's game, runs the model to the SAEs' layer,
and scores every SAE found at the paths (ours, dictionary_learning, SAELens, a sweep's run
folder) with the same code, references and loss recovered as the live evaluator; prints the
tables and writes the records as JSON (`{"saes": ..., "references": ...}`, final_metrics.json's
layout). An SAE of another width, layer or game is refused with a one-line error.
"""

from __future__ import annotations

from pathlib import Path

from boardlens.atomic import write_json
from boardlens.lm.formats import load_any
from boardlens.metrics.evalset import model_evalset
from boardlens.metrics.scorer import Scorer
from boardlens.registry import GAMES
from boardlens.sae.interop import FoundSAE, find_saes
from boardlens.services.up import format_table


class ScoreError(ValueError):
    """A one-line reason the SAEs cannot be scored against this model."""


def check(found: list[FoundSAE], game: str, layer: int, width: int) -> None:
    for s in found:
        if s.ae.d_in != width:
            raise ScoreError(f"SAE {s.name}: input width {s.ae.d_in}, the model's residual is {width}")
        if s.layer is not None and s.layer != layer:
            raise ScoreError(f"SAE {s.name} was trained on layer {s.layer}; scoring layer {layer} (pass --layer)")
        if s.game is not None and s.game != game:
            raise ScoreError(f"SAE {s.name} was trained on {s.game} games; the model plays {game}")


def model_and_saes(paths: list[str], model_path: str, layer: int | None = None) -> tuple:
    """(model in eval mode, its game, the layer, every SAE found at the paths), each SAE checked
    against the model; SAEs of the same name in two folders are named by their folder too."""
    model, meta = load_any(model_path)
    game, layer = meta["game"], meta["sae_layer"] if layer is None else layer
    pairs = [(p, s) for p in paths for s in find_saes(p)]
    if len({s.name for _, s in pairs}) != len(pairs):  # the same names in two folders: say which
        pairs = [(p, s._replace(name=f"{Path(p).name}/{s.name}")) for p, s in pairs]
    found = [s for _, s in pairs]
    check(found, game, layer, model.config.n_embd)
    return model.eval(), game, layer, found


def model_and_sae(path: str, model_path: str, layer: int | None = None) -> tuple:
    """`model_and_saes` for a path holding exactly one SAE: (model, game, layer, the SAE)."""
    model, game, layer, found = model_and_saes([path], model_path, layer)
    if len(found) != 1:
        raise ValueError(f"{path} holds {len(found)} SAEs; give one")
    return model, game, layer, found[0]


def run(paths: list[str], model_path: str, games: int = 1000, layer: int | None = None, seed: int = 12_345,
        json_out: str | None = None, references: bool = True) -> dict:
    model, game, layer, found = model_and_saes(paths, model_path, layer)
    es = model_evalset(model, game, layer, games, games, seed, GAMES[game].default_batch_games, workers=0)
    scorer = Scorer(es, game, layer, model, model_path, lambda p: load_any(p)[0].eval())
    refs = {r["reference"]: r for r in scorer.fixed_references()} if references else {}
    saes = {}
    for s in found:
        saes[s.name] = scorer.score(s.name, s.step if s.step is not None else -1, s.ae)
        if references:
            r = scorer.random_sae_reference(s.ae.d_in, s.ae.d_sae)
            refs[r["reference"]] = r
    result = {"model": str(model_path), "game": game, "layer": layer, "games": games, "seed": seed,
              "saes": saes, "references": refs}
    print(format_table(result), flush=True)
    if json_out:
        write_json(json_out, result)
    return result

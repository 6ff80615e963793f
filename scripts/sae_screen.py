"""Screen SAE recipes offline on a bundled model: the demo's recipe is chosen from these runs.

`boardlens up` streams fresh games to the trainers and is the product; this script is the lab
bench beside it. It runs the model once over fresh games into an in-memory activation cache
(the residual after the SAE layer, every position), then trains the project's own trainers
(the same classes and specs as `--saes`) on shuffled batches of that cache, and scores
snapshots with the evaluator's own code (`evaluate_sae`) on its own 1000 + 1000 fresh games.
So a recipe's figures are those `up` would give for the same rows and steps, minutes faster,
because the LM forward and the labels are paid once for all recipes.

    .venv/bin/python scripts/sae_screen.py --tokens 2000000 --saes "topk:k=16" \
        --saes "p_anneal:penalty=0.05" --batch-size 512 --eval-every 500 --out runs/screen/topk.jsonl

Batch size, LR and warmup default to `up`'s recipe (`up_defaults`), activations normalised.

Each line of --out is one snapshot's record: the recipe, step, tokens seen, seconds of
training so far, and each family's coverage / reconstruction (mine/theirs/empty first).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import torch

from boardlens.games.stream import GameStream
from boardlens.lm.formats import load_any
from boardlens.metrics.evalset import evaluate_sae, model_evalset
from boardlens.sae.sweep import build_trainers, expand_specs
from boardlens.services.config import DEFAULT_MODEL
from boardlens.services.up import up_defaults

UP = up_defaults(2)["trainer"]  # the recipe a screened one is compared with


@torch.no_grad()
def activation_cache(model, game: str, layer: int, tokens: int, seed: int, batch_games: int = 64) -> torch.Tensor:
    """(N >= tokens, d) float32: the residual after block `layer` at every position of fresh games."""
    rows, n = [], 0
    with GameStream(game, batch_games, seed=seed) as stream:
        while n < tokens:
            g = stream.next()
            tok = torch.from_numpy(g.tokens).long()
            _, resid = model(tok, resid_layers=(layer,), stop_after=layer)
            lengths = torch.from_numpy(g.lengths)
            valid = torch.arange(tok.shape[1])[None, :] < lengths[:, None]  # (B, T): no padding rows
            rows.append(resid[layer].float()[valid])
            n += rows[-1].shape[0]
    return torch.cat(rows)


@click.command()
@click.option("--model", "model_path", default=DEFAULT_MODEL, show_default=True)
@click.option("--layer", type=int, default=None, help="SAE layer [default: the model's sae_layer].")
@click.option("--tokens", type=int, default=1_000_000, show_default=True, help="Rows in the activation cache.")
@click.option("--epochs", type=float, default=1.0, show_default=True, help="Passes over the cache.")
@click.option("--saes", multiple=True, required=True, help="Trainer specs, as up's --saes.")
@click.option("--d-sae", type=int, default=4096, show_default=True)
@click.option("--batch-size", type=int, default=UP["batch_size"], show_default=True)
@click.option("--lr", type=float, default=UP["lr"], show_default=True)
@click.option("--warmup-steps", type=int, default=UP["warmup_steps"], show_default=True)
@click.option("--eval-every", type=int, default=250, show_default=True, help="Steps between scorings.")
@click.option("--eval-games", type=int, default=1000, show_default=True, help="Per split.")
@click.option("--threads", type=int, default=0, help="torch threads (0 = torch's default).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def main(model_path, layer, tokens, epochs, saes, d_sae, batch_size, lr, warmup_steps, eval_every, eval_games,
         threads, out) -> None:
    if threads:
        torch.set_num_threads(threads)
    model, meta = load_any(model_path)
    model.eval()
    game = meta["game"]
    layer = int(meta["sae_layer"] if layer is None else layer)
    t0 = time.perf_counter()
    cache = activation_cache(model, game, layer, tokens, seed=777)
    es = model_evalset(model, game, layer, eval_games, eval_games, seed=4242)
    click.echo(f"cache {tuple(cache.shape)} and eval set in {time.perf_counter() - t0:.0f} s")
    steps = max(1, int(epochs * cache.shape[0] / batch_size))
    defaults = {"d_sae": d_sae, "lr": lr, "warmup_steps": warmup_steps, "normalize": True}
    trainers = build_trainers(expand_specs(saes), cache.shape[1], steps, defaults)
    gen = torch.Generator().manual_seed(0)
    out.parent.mkdir(parents=True, exist_ok=True)
    train_s = {t.name: 0.0 for t in trainers}
    with out.open("a") as f:
        order = torch.randperm(cache.shape[0], generator=gen)
        pos = 0
        for step in range(1, steps + 1):
            if pos + batch_size > order.numel():
                order, pos = torch.randperm(cache.shape[0], generator=gen), 0
            x = cache[order[pos : pos + batch_size]]
            pos += batch_size
            for t in trainers:  # same batches for every trainer, as a sweep
                t1 = time.perf_counter()
                t.update(x)
                train_s[t.name] += time.perf_counter() - t1
            if step % eval_every == 0 or step == steps:
                for t in trainers:
                    scores, stats = evaluate_sae(t.export_ae(), es)
                    rec = {"model": model_path, "sae": t.name, "spec": t.resolved_options(), "step": step,
                           "tokens": step * batch_size, "train_seconds": round(train_s[t.name], 1),
                           "l0": stats.l0, "var_explained": stats.var_explained,
                           "families": {k: [round(v.coverage, 4), round(v.reconstruction, 4)]
                                        for k, v in scores.items()}}
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    mte = rec["families"].get("mine_theirs_empty") or next(iter(rec["families"].values()))
                    click.echo(f"{t.name:28s} step {step:6d} {train_s[t.name]:7.0f}s L0 {stats.l0:6.1f} "
                               f"FVE {stats.var_explained:.3f} board cov/rec {mte[0]:.3f}/{mte[1]:.3f}")


if __name__ == "__main__":
    main()

"""One full evaluation of a trained 4096-latent SAE on 1000 train + 1000 test games.

    .venv/bin/python benchmarks/evaluator_speed.py [--game othello|chess] [--games 1000] [--threads 2]
    .venv/bin/python benchmarks/evaluator_speed.py --tiny    # seconds; what the tests run

Trains a Standard SAE briefly on the bundled model's activations (so its codes are as sparse as
a trained SAE's), then times `evaluate_sae`: every family, every reconstruction variant and the
unsupervised stats (loss recovered excluded), each split encoded once; the median of --repeats.
Target (Othello): <= 4 s on 2 cores. Then the train-split counts alone: `count_on` reading the stored sparse codes
against the baseline, the direct dense formulation (one (F, N) @ (N, B) product per threshold)
on the same codes, in the same run. Target: >= 20x. Stop other work on the machine first: a
busy core makes small torch ops many times slower. --tiny: 512 latents, 5 training steps,
8 + 8 games (the code runs; so short a training leaves dense codes, so the ratio says little).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boardlens.games.stream import GameStream  # noqa: E402
from boardlens.lm.checkpoint import load_model  # noqa: E402
from boardlens.metrics import supervised as S  # noqa: E402
from boardlens.metrics.codes import Codes  # noqa: E402
from boardlens.metrics.evalset import EvalSet, evaluate_sae  # noqa: E402
from boardlens.registry import GAMES  # noqa: E402
from boardlens.sae.standard import StandardTrainer  # noqa: E402
from boardlens.services.config import bundled_model  # noqa: E402


@torch.no_grad()
def activations(model, layer, games):
    _, resid = model(torch.from_numpy(games.tokens).long(), resid_layers=(layer,), stop_after=layer)
    return resid[layer]


def dense_counts(f, labels, fmax):
    """Baseline: the direct formulation, one dense product per threshold."""
    K, F = len(S.THRESHOLDS), fmax.shape[0]
    on = torch.zeros(K, F, labels.shape[1])
    for i, t in enumerate(S.THRESHOLDS):
        a = ((f > t * fmax) & (fmax > 0)).float()
        on[i] = a.T @ labels.float()
    return on


def trained_sae(model, layer, stream, steps: int, d_sae: int) -> StandardTrainer:
    tr = StandardTrainer("s", model.config.n_embd, d_sae=d_sae, penalty=0.05, total_steps=steps,
                         warmup_steps=min(20, steps - 1), lr=1e-3)
    for _ in range(steps):
        g = stream.next()
        x = activations(model, layer, g)[torch.from_numpy(np.arange(g.tokens.shape[1])[None] < g.lengths[:, None])]
        tr.update(x[torch.randperm(x.shape[0])[:2048]])
    return tr


def eval_set(model, layer, game: str, stream, games: int) -> EvalSet:
    es = EvalSet(GAMES[game].families(), games, games)
    gid = 0
    while not es.full:
        g = stream.next()
        n = len(g)
        es.add(activations(model, layer, g), torch.from_numpy(g.tokens), torch.arange(gid, gid + n),
               torch.from_numpy(g.lengths), torch.from_numpy(g.label_pos),
               {k: torch.from_numpy(v) for k, v in g.labels.items()})
        gid += n
    return es


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--game", default="othello", choices=["othello", "chess"])
    ap.add_argument("--model", default=None, help="default: the game's bundled model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--games", type=int, default=1000, help="games per split of the eval set")
    ap.add_argument("--repeats", type=int, default=5, help="timed evaluations (the median is the figure)")
    ap.add_argument("--tiny", action="store_true",
                    help="512 latents, 5 training steps, 8 + 8 games: checks the code runs")
    args = ap.parse_args()
    if args.tiny:
        args.d_sae, args.train_steps, args.games, args.repeats = 512, 5, 8, 1
    torch.set_num_threads(args.threads)
    model, meta = load_model(args.model or bundled_model(args.game))
    layer = meta["sae_layer"]
    with GameStream(args.game, 8 if args.tiny else GAMES[args.game].default_batch_games, seed=0) as stream:
        tr = trained_sae(model, layer, stream, args.train_steps, args.d_sae)
        es = eval_set(model, layer, args.game, stream, args.games)
    report(tr.ae, es, args)


def report(ae, es: EvalSet, args) -> None:
    evaluate_sae(ae, es)  # warm-up: first-call allocations and kernels
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        scores, stats = evaluate_sae(ae, es)
        runs.append(time.perf_counter() - t0)
    ours = float(np.median(runs))
    t = es.tensors()
    print(f"{args.game} evaluate_sae: {ours:.2f} s (median of {len(runs)}, range {min(runs):.2f}-{max(runs):.2f}) "
          f"for {args.d_sae} latents, {args.games} + {args.games} games "
          f"({t['train']['x'].shape[0]} + {t['test']['x'].shape[0]} labelled positions, "
          f"{t['train']['x_all'].shape[0] + t['test']['x_all'].shape[0]} in all), L0 {stats.l0:.1f}, "
          f"{args.threads} threads (target <= 4 s for Othello)")
    for k, v in list(scores.items())[:3]:
        print(f"  {k}: coverage {v.coverage:.3f}, reconstruction {v.reconstruction:.3f} (per square "
              f"{v.reconstruction_per_square:.3f}, held-out {v.reconstruction_heldout:.3f}, "
              f"last {v.reconstruction_last:.3f}), {v.hpc_latents} HPC latents")
    labels = torch.cat(list(t["train"]["labels"].values()), 1)
    codes = Codes(ae.encode, t["train"]["x"])
    fmax = codes.fmax()
    t0 = time.perf_counter()
    sparse, _ = S.count_on(codes, labels, fmax)
    sparse_s = time.perf_counter() - t0
    with torch.no_grad():
        f = ae.encode(t["train"]["x"])
    t0 = time.perf_counter()
    dense = dense_counts(f, labels, fmax)
    dense_s = time.perf_counter() - t0
    assert torch.allclose(dense, sparse)
    print(f"codes {float((f > 0).float().mean()):.1%} nonzero ({'dense' if codes.dense else 'sparse'} path); "
          f"train-split counts: count_on {sparse_s:.3f} s vs baseline (dense per-threshold products) "
          f"{dense_s:.3f} s: ratio baseline / ours {dense_s / sparse_s:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()

"""One evaluation of a trained 4096-latent SAE on 200 train + 200 test Othello games.

    .venv/bin/python benchmarks/evaluator_speed.py [--model models/othello-gpt] [--threads 2]
    .venv/bin/python benchmarks/evaluator_speed.py --tiny    # seconds; what the tests run

Trains a Standard SAE briefly on the bundled model's activations (so its codes are as sparse as
a real SAE's), then times `evaluate_sae`, and compares with the dense formulation (K dense
(F, N) @ (N, B) products per split) on the same data. Target: < 30 s on 2 cores.
The baseline of the ratio is that dense formulation, measured in the same run on the train
split. --tiny: 512 latents, 5 training steps of 8 games, 8 + 8 games (the same code, but codes
of so short a training are dense, so count_on takes its dense branch and the ratio says little).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boardlens.games.othello.lm_data import labelled_games  # noqa: E402
from boardlens.lm.checkpoint import load_model  # noqa: E402
from boardlens.metrics import supervised as S  # noqa: E402
from boardlens.metrics.evalset import EvalSet, evaluate_sae  # noqa: E402
from boardlens.registry import GAMES  # noqa: E402
from boardlens.sae.standard import StandardTrainer  # noqa: E402
from boardlens.services.config import DEFAULT_MODEL  # noqa: E402


@torch.no_grad()
def activations(model, layer, games):
    _, resid = model(torch.from_numpy(games.tokens), resid_layers=(layer,), stop_after=layer)
    return resid[layer]


def dense_counts(encode, x, labels, fmax):
    """Baseline: the direct formulation, one dense product per threshold."""
    K, F = len(S.THRESHOLDS), fmax.shape[0]
    on = torch.zeros(K, F, labels.shape[1])
    f = encode(x)
    for i, t in enumerate(S.THRESHOLDS):
        a = ((f > t * fmax) & (fmax > 0)).float()
        on[i] = a.T @ labels.float()
    return on


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--train-games", type=int, default=36, help="games per SAE training step")
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--games", type=int, default=200, help="games per split of the eval set")
    ap.add_argument("--tiny", action="store_true",
                    help="512 latents, 5 steps of 8 games, 8 + 8 games: checks the code runs")
    args = ap.parse_args()
    batch_games = 64  # games per forward while the eval set fills
    if args.tiny:
        args.d_sae, args.train_steps, args.train_games, args.games, batch_games = 512, 5, 8, 8, 16
    torch.set_num_threads(args.threads)
    model, meta = load_model(args.model)
    layer = meta["sae_layer"]
    rng = np.random.default_rng(0)
    tr = StandardTrainer("s", model.config.n_embd, d_sae=args.d_sae, penalty=0.05,
                         total_steps=args.train_steps, warmup_steps=min(20, args.train_steps - 1), lr=1e-3)
    for _ in range(args.train_steps):
        g = labelled_games(rng, args.train_games)
        x = activations(model, layer, g)[torch.from_numpy(np.arange(59)[None] < g.lengths[:, None])]
        tr.update(x[torch.randperm(x.shape[0])[:2048]])
    es = EvalSet(GAMES["othello"].families(), args.games, args.games)
    gid = 0
    while not es.full:
        g = labelled_games(rng, batch_games)
        es.add(activations(model, layer, g), torch.from_numpy(g.tokens), torch.arange(gid, gid + batch_games),
               torch.from_numpy(g.lengths), torch.from_numpy(g.label_pos),
               {k: torch.from_numpy(v) for k, v in g.labels.items()})
        gid += batch_games
    t0 = time.perf_counter()
    scores, stats = evaluate_sae(tr.ae, es)
    ours = time.perf_counter() - t0
    print(f"evaluate_sae: {ours:.2f} s for {args.d_sae} latents, {args.games} + {args.games} games "
          f"({es.tensors()['train']['x'].shape[0]} + {es.tensors()['test']['x'].shape[0]} positions), "
          f"L0 {stats.l0:.1f}, {args.threads} threads (target < 30 s)")
    for k, v in scores.items():
        print(f"  {k}: coverage {v.coverage:.3f} @ t={v.coverage_threshold}, "
              f"reconstruction {v.reconstruction:.3f} @ t={v.reconstruction_threshold}")
    t = es.tensors()["train"]
    labels = torch.cat(list(t["labels"].values()), 1)
    fmax = S.max_activations(tr.ae.encode, t["x_all"])
    t0 = time.perf_counter()
    with torch.no_grad():
        dense = dense_counts(tr.ae.encode, t["x"], labels, fmax)
    dense_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sparse, _ = S.count_on(tr.ae.encode, t["x"], labels, fmax)
    sparse_s = time.perf_counter() - t0
    assert torch.allclose(dense, sparse)
    with torch.no_grad():
        nonzero = float((tr.ae.encode(t["x"]) > 0).float().mean())
    branch = "dense" if nonzero > S.DENSE_FRACTION else "sparse"
    print(f"codes {nonzero:.1%} nonzero: count_on took its {branch} branch "
          f"(dense above {S.DENSE_FRACTION:.0%})")
    print(f"train-split counts: count_on (buckets) {sparse_s:.3f} s vs baseline (dense per-threshold "
          f"products) {dense_s:.3f} s: ratio baseline / ours {dense_s / sparse_s:.2f}x")


if __name__ == "__main__":
    main()

"""One evaluation of a trained 4096-latent SAE on 200 train + 200 test Othello games.

    .venv/bin/python benchmarks/evaluator_speed.py [--model models/othello-gpt] [--threads 2]

Trains a Standard SAE briefly on the bundled model's activations (so its codes are as sparse as
a real SAE's), then times `evaluate_sae`, and compares with the dense formulation (K dense
(F, N) @ (N, B) products per split) on the same data. Target: < 30 s on 2 cores.
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
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, meta = load_model(args.model)
    layer = meta["sae_layer"]
    rng = np.random.default_rng(0)
    tr = StandardTrainer("s", model.config.n_embd, 4096, 0.05, warmup_steps=20, lr=1e-3)
    for _ in range(args.train_steps):
        g = labelled_games(rng, 36)
        x = activations(model, layer, g)[torch.from_numpy(np.arange(59)[None] < g.lengths[:, None])]
        tr.update(x[torch.randperm(x.shape[0])[:2048]])
    es = EvalSet(GAMES["othello"].families(), 200, 200)
    gid = 0
    while not es.full:
        g = labelled_games(rng, 64)
        es.add(activations(model, layer, g), torch.from_numpy(g.tokens), torch.arange(gid, gid + 64), torch.from_numpy(g.lengths),
               torch.from_numpy(g.label_pos), {k: torch.from_numpy(v) for k, v in g.labels.items()})
        gid += 64
    t0 = time.perf_counter()
    scores, stats = evaluate_sae(tr.ae, es)
    ours = time.perf_counter() - t0
    print(f"evaluate_sae: {ours:.2f} s for 4096 latents, 200 + 200 games "
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
    print(f"train-split counts: sparse buckets {sparse_s:.2f} s vs dense per-threshold products "
          f"{dense_s:.2f} s: {dense_s / sparse_s:.1f}x")


if __name__ == "__main__":
    main()

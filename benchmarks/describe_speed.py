"""The describe pass of a trained 4096-latent SAE on 1000 train + 1000 test games: every latent's
best BSP and its clarity, responsiveness and purity (faithfulness excluded: it runs the model).

    .venv/bin/python benchmarks/describe_speed.py [--game othello|chess] [--games 1000] [--threads 2]
    .venv/bin/python benchmarks/describe_speed.py --tiny    # seconds; what the tests run

Trains a Standard SAE briefly on the bundled model's activations (as benchmarks/evaluator_speed.py
does, so its codes are as sparse as a trained SAE's), then times `describe` + `fade_scores`, the
median of --repeats. Target: < 60 s on this 2-core machine (fast enough to run live, beside the
evaluator's coverage pass, which is printed for scale). Baseline, in the same run: the same
scores one latent at a time (a per-latent loop over the same ranking code, as a straightforward
implementation would), timed on --baseline-latents latents and scaled to all of them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluator_speed import eval_set, trained_sae  # noqa: E402

from boardlens.games.stream import GameStream  # noqa: E402
from boardlens.interpret.describe import describe  # noqa: E402
from boardlens.interpret.fade import fade_scores  # noqa: E402
from boardlens.lm.checkpoint import load_model  # noqa: E402
from boardlens.metrics.codes import Codes  # noqa: E402
from boardlens.metrics.evalset import evaluate_sae  # noqa: E402
from boardlens.metrics.references import identity  # noqa: E402
from boardlens.registry import GAMES  # noqa: E402
from boardlens.services.config import bundled_model  # noqa: E402


def describe_pass(ae, t: dict):
    train, test = Codes(ae.encode, t["train"]["x"]), Codes(ae.encode, t["test"]["x"])
    desc = describe(train, t["train"]["labels"])
    return desc, fade_scores(test, torch.cat(list(t["test"]["labels"].values()), 1), desc)


def per_latent(ae, t: dict, desc, latents: list[int]) -> None:
    """Baseline: the same scores, one latent (one column of codes) at a time."""
    x = t["test"]["x"]
    labels = torch.cat(list(t["test"]["labels"].values()), 1)
    w = ae.encoder.weight
    for j in latents:
        if desc.bsp[j] < 0:
            continue
        col = torch.relu((x - ae.bias) @ w[j] + ae.encoder.bias[j])[:, None]  # latent j's codes (N, 1)
        one = desc._replace(**{k: getattr(desc, k)[j : j + 1] for k in desc._fields})
        fade_scores(Codes(identity, col), labels, one)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--game", default="othello", choices=["othello", "chess"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--games", type=int, default=1000, help="games per split of the eval set")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-latents", type=int, default=128)
    ap.add_argument("--tiny", action="store_true", help="512 latents, 5 training steps, 8 + 8 games")
    args = ap.parse_args()
    if args.tiny:
        args.d_sae, args.train_steps, args.games, args.repeats, args.baseline_latents = 512, 5, 8, 1, 16
    torch.set_num_threads(args.threads)
    model, meta = load_model(bundled_model(args.game))
    layer = meta["sae_layer"]
    with GameStream(args.game, 8 if args.tiny else GAMES[args.game].default_batch_games, seed=0) as stream:
        ae = trained_sae(model, layer, stream, args.train_steps, args.d_sae).ae.eval()
        es = eval_set(model, layer, args.game, stream, args.games)
    t = es.tensors()
    with torch.no_grad():
        describe_pass(ae, t)  # warm-up
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            desc, scores = describe_pass(ae, t)
            runs.append(time.perf_counter() - t0)
        ours = float(np.median(runs))
        t0 = time.perf_counter()
        evaluate_sae(ae, es)
        coverage_s = time.perf_counter() - t0
        alive = desc.alive.nonzero().squeeze(1).tolist()
        sample = alive[:: max(1, len(alive) // args.baseline_latents)][: args.baseline_latents]
        t0 = time.perf_counter()
        per_latent(ae, t, desc, sample)
        base = (time.perf_counter() - t0) / max(len(sample), 1) * len(alive)
    print(f"{args.game} describe pass: {ours:.1f} s (median of {len(runs)}, range {min(runs):.1f}-{max(runs):.1f}) "
          f"for {args.d_sae} latents ({len(alive)} described), {args.games} + {args.games} games "
          f"({t['train']['x'].shape[0]} + {t['test']['x'].shape[0]} labelled positions), {args.threads} threads "
          f"(target < 60 s); one coverage evaluation of the same SAE: {coverage_s:.1f} s")
    print(f"baseline (one latent at a time, {len(sample)} timed, scaled to {len(alive)}): {base:.1f} s: "
          f"ratio baseline / ours {base / ours:.1f}x")
    mean = {k: float(torch.nanmean(getattr(scores, k))) for k in ("clarity", "responsiveness", "purity")}
    print("  mean over described latents: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))


if __name__ == "__main__":
    main()

"""Linear-probe board accuracy: how linearly a layer's residual stream encodes the board.

    boardlens lm probe --model models/chess-gpt --train-games 2000 --test-games 500

At the labelled positions (chess: the first 20 '.' of each game; Othello: every position), a
multinomial logistic-regression probe per square reads the main family's class (chess: the
13 piece values incl. blank; Othello: mine/theirs/empty) from the residual after block
`layer`. Accuracy is over all 64 squares of the held-out games, next to the baseline that
always answers each square's most common training class. Games are split as the evaluator
splits them (by a hash of the game id), so train and test never share a game.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from boardlens.games.stream import GameStream
from boardlens.metrics.evalset import is_test_game
from boardlens.registry import GAMES


class ProbeResult(NamedTuple):
    accuracy: float  # held-out, all squares
    baseline: float  # most common training class per square
    family: str
    layer: int
    train_positions: int
    test_positions: int


@torch.no_grad()
def collect(model, game: str, layer: int, num_games: int, seed: int,
            batch_games: int = 16) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(N, d) activations at labelled positions, (N, cells) main-family classes, (N,) game ids."""
    fam = GAMES[game].families()[0]
    xs, ys, ids = [], [], []
    with GameStream(game, batch_games, seed=seed) as stream:
        done = 0
        while done < num_games:
            g = stream.next()
            _, resid = model(torch.from_numpy(g.tokens), resid_layers=(layer,), stop_after=layer)
            acts = resid[layer].float()  # (B, T, d)
            rows, slots = np.nonzero(g.label_pos >= 0)
            xs.append(acts[torch.from_numpy(rows), torch.from_numpy(g.label_pos[rows, slots].astype(np.int64))])
            ys.append(torch.from_numpy(g.labels[fam.name][rows, slots].reshape(len(rows), -1).astype(np.int64)))
            ids.append(done + rows)
            done += len(g)
    return torch.cat(xs), torch.cat(ys), np.concatenate(ids)


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int = 300,
              lr: float = 0.05, weight_decay: float = 1e-4) -> torch.nn.Linear:
    """Full-batch Adam on standardised inputs: x (N, d), y (N, cells) -> Linear(d, cells*C)."""
    cells = y.shape[1]
    probe = torch.nn.Linear(x.shape[1], cells * num_classes)
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        logits = probe(x).reshape(-1, cells, num_classes)
        loss = F.cross_entropy(logits.reshape(-1, num_classes), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probe


def probe_board(model, game: str, layer: int, train_games: int = 1000, test_games: int = 500,
                seed: int = 0, steps: int = 300) -> ProbeResult:
    fam = GAMES[game].families()[0]
    x, y, gid = collect(model, game, layer, train_games + test_games, seed)
    test = torch.from_numpy(is_test_game(gid, test_games / (train_games + test_games)))
    mean, std = x[~test].mean(0), x[~test].std(0).clamp_min(1e-6)
    x = (x - mean) / std
    probe = fit_probe(x[~test], y[~test], fam.num_classes, steps)
    with torch.no_grad():
        pred = probe(x[test]).reshape(-1, y.shape[1], fam.num_classes).argmax(-1)
    majority = torch.mode(y[~test], dim=0).values  # (cells,)
    return ProbeResult(float((pred == y[test]).float().mean()),
                       float((majority[None, :] == y[test]).float().mean()),
                       fam.name, layer, int((~test).sum()), int(test.sum()))


class LayerReport(NamedTuple):
    layer: int
    probe: dict  # family -> FamilyScore of the per-BSP probes (the evaluator's linear_probe)
    mlp: dict | None  # family -> FamilyScore of the block's MLP neurons (None: not asked for)


def layer_reports(model, game: str, layers, train_games: int = 1000, test_games: int = 1000,
                  seed: int = 12345, mlp: bool = True) -> list[LayerReport]:
    """Coverage and reconstruction of the linear probe and of the MLP neurons at each layer,
    on the same fresh games (the evaluator's splits and metric code)."""
    from boardlens.metrics.evalset import model_evalset
    from boardlens.metrics.references import (
        mlp_neurons,
        probe_reference,
        residual,
        score_features,
    )

    layers = list(layers)
    es = model_evalset(model, game, layers[0], train_games, test_games, seed)
    out = []
    for layer in layers:  # the same games at every layer
        probe = probe_reference(es.recompute(residual(model, layer)), es.families).scores
        neurons = es.recompute(mlp_neurons(model, layer)) if mlp else None
        out.append(LayerReport(layer, probe, neurons and score_features(neurons["train"], neurons["test"],
                                                                        es.families)))
    return out

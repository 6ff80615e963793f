"""The evaluation set: train and test games taken from the stream, split by game id.

A game goes to the test split when a hash of its id falls in the test fraction, so the split
is the same whichever consumer builds it and in whatever order games arrive. Stored per
split: activations of labelled positions (N, d) with their one-hot BSPs {family: (N, B)
bool}, plus all valid positions' activations for the unsupervised metrics.
"""

from __future__ import annotations

import numpy as np
import torch

from boardlens.labels import Family
from boardlens.metrics.codes import Codes
from boardlens.metrics.supervised import FamilyScore, score_families
from boardlens.metrics.unsupervised import ReconStats, recon_stats


def is_test_game(game_ids: np.ndarray, test_fraction: float = 0.5) -> np.ndarray:
    """Deterministic split: splitmix64(game_id) mapped to [0, 1) < test_fraction."""
    z = np.asarray(game_ids, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < test_fraction


class _Split:
    def __init__(self) -> None:
        self.games: set[int] = set()
        self.x_labelled: list[torch.Tensor] = []
        self.labels: dict[str, list[torch.Tensor]] = {}
        self.x_all: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []  # per game (length,) int64
        self.positions: list[torch.Tensor] = []  # per game: its labelled positions (n,) int64

    def labelled_rows(self) -> torch.Tensor:
        """(M,) row in the concatenated x_all of each labelled row, in x's order."""
        starts = torch.tensor([0] + [t.numel() for t in self.tokens]).cumsum(0)[:-1].tolist()
        return torch.cat([p + s for p, s in zip(self.positions, starts, strict=True)]) if self.positions \
            else torch.empty(0, dtype=torch.long)


class EvalSet:
    def __init__(self, families: tuple[Family, ...], n_train_games: int, n_test_games: int) -> None:
        if n_train_games < 1 or n_test_games < 1:
            raise ValueError("n_train_games and n_test_games must be >= 1")
        self.families = {f.name: f for f in families}
        self.want = {"train": n_train_games, "test": n_test_games}
        self.splits = {"train": _Split(), "test": _Split()}
        self.width: int | None = None  # d of the activations, from the first batch
        self._frozen: dict | None = None

    @property
    def full(self) -> bool:
        return all(len(self.splits[s].games) >= self.want[s] for s in self.splits)

    def progress(self) -> dict[str, int]:
        return {s: len(self.splits[s].games) for s in self.splits}

    def add(self, acts: torch.Tensor, tokens: torch.Tensor, game_ids: torch.Tensor, lengths: torch.Tensor,
            label_pos: torch.Tensor, labels: dict[str, torch.Tensor]) -> int:
        """Take games from a batch until both splits are full; returns games taken.

        acts (B, T, d); tokens (B, T); game_ids (B,); lengths (B,); label_pos (B, P) (-1 = none);
        labels {family: (B, P, R, C)} class values.
        """
        missing = set(self.families) - set(labels)
        if missing:
            raise ValueError(f"batch lacks label families {sorted(missing)}")
        if self.width is not None and acts.shape[-1] != self.width:
            raise ValueError(f"activations are {acts.shape[-1]} wide, the eval set's {self.width}")
        self.width = acts.shape[-1]
        test = is_test_game(game_ids.numpy())
        taken = 0
        for b in range(acts.shape[0]):
            split = self.splits["test" if test[b] else "train"]
            gid = int(game_ids[b])
            if len(split.games) >= self.want["test" if test[b] else "train"] or gid in split.games:
                continue
            split.games.add(gid)
            n = int(lengths[b])
            split.x_all.append(acts[b, :n].float().clone())
            pos = label_pos[b]
            keep = (pos >= 0) & (pos < n)
            p = pos[keep].long()
            split.x_labelled.append(acts[b, p].float().clone())
            split.tokens.append(tokens[b, :n].clone())
            split.positions.append(p)
            for name, fam in self.families.items():
                split.labels.setdefault(name, []).append(fam.one_hot(labels[name][b][keep]))
            taken += 1
            self._frozen = None
        return taken

    def games(self, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(tokens (n,), activations (n, d)) of each game of a split, in arrival order."""
        sp = self.splits[split]
        return list(zip(sp.tokens, sp.x_all, strict=True))

    def tensors(self) -> dict:
        """Concatenated splits (cached until the next add)."""
        if self._frozen is None:
            out = {}
            for s, sp in self.splits.items():
                out[s] = {
                    "x": torch.cat(sp.x_labelled) if sp.x_labelled else torch.empty(0),
                    "x_all": torch.cat(sp.x_all) if sp.x_all else torch.empty(0),
                    "labels": {k: torch.cat(v) for k, v in sp.labels.items()},
                    "labelled_rows": sp.labelled_rows(),
                }
            self._frozen = out
        return self._frozen

    @torch.no_grad()
    def recompute(self, features, batch_games: int = 64) -> dict:
        """`tensors()` with x and x_all replaced by features(tokens (B, T)) -> (B, T, F).

        Games of equal length are run together (no padding enters a causal model's valid
        positions anyway); rows come out in the order of `tensors()`.
        """
        out = {}
        for s, sp in self.splits.items():
            xs, alls = [None] * len(sp.tokens), [None] * len(sp.tokens)
            by_len: dict[int, list[int]] = {}
            for i, tok in enumerate(sp.tokens):
                by_len.setdefault(tok.numel(), []).append(i)
            for idx in by_len.values():
                for c in range(0, len(idx), batch_games):
                    group = idx[c : c + batch_games]
                    f = features(torch.stack([sp.tokens[i] for i in group]))  # (b, T, F)
                    for j, i in enumerate(group):
                        alls[i] = f[j]
                        xs[i] = f[j, sp.positions[i]]
            out[s] = {"x": torch.cat(xs) if xs else torch.empty(0),
                      "x_all": torch.cat(alls) if alls else torch.empty(0),
                      "labels": self.tensors()[s]["labels"], "labelled_rows": sp.labelled_rows()}
        return out


@torch.no_grad()
def model_evalset(model, game: str, layer: int, train_games: int, test_games: int, seed: int,
                  batch_games: int = 64, workers: int | None = None) -> EvalSet:
    """An `EvalSet` (as the evaluator builds it) of fresh games of `game` (the stream of
    `seed`, `batch_games` per batch), with the model's residual after block `layer`."""
    from boardlens.games.stream import GameStream
    from boardlens.registry import GAMES

    es = EvalSet(GAMES[game].families(), train_games, test_games)
    gid = 0
    kwargs = {} if workers is None else {"workers": workers}
    with GameStream(game, batch_games, seed=seed, **kwargs) as stream:
        while not es.full:
            g = stream.next()
            tokens = torch.from_numpy(g.tokens).long()
            _, resid = model(tokens, resid_layers=(layer,), stop_after=layer)
            es.add(resid[layer].float(), tokens, torch.arange(gid, gid + len(g)), torch.from_numpy(g.lengths),
                   torch.from_numpy(g.label_pos), {k: torch.from_numpy(v) for k, v in g.labels.items()})
            gid += len(g)
    return es


def evaluate_sae(ae, evalset: EvalSet) -> tuple[dict[str, FamilyScore], ReconStats]:
    """Supervised scores per family and unsupervised stats over all eval positions."""
    return evaluate_tensors(ae, evalset.tensors(), evalset.families)


STATS_ROWS = 65_536  # per split: the unsupervised stats read at most this many positions


def stats_sample(n: int, limit: int = STATS_ROWS) -> torch.Tensor:
    """Rows of a split's n positions that the unsupervised stats read: all of them up to
    `limit` (an Othello split of 1000 games has 59k), else `limit` evenly spaced ones (a chess
    split of 1000 games has ~255k character positions, of which only ~8% are labelled; the
    stats' standard errors are already tiny at 65k)."""
    if n <= limit:
        return torch.arange(n)
    return torch.linspace(0, n - 1, limit, dtype=torch.float64).round().long().unique()


def evaluate_tensors(ae, t: dict, families: dict | None = None) -> tuple[dict[str, FamilyScore], ReconStats]:
    """`evaluate_sae` on split tensors as `EvalSet.tensors()` / `recompute()` give them;
    families {name: Family} give the squares of the per-square variant. Each split's needed
    rows (labelled ones and the stats sample) are encoded once: every pass reads those codes."""
    tr, te = t["train"], t["test"]
    ae = ae.float().eval()
    labelled, for_stats, x_stats = {}, [], []
    for s in ("train", "test"):
        x_all = t[s]["x_all"]
        sample = stats_sample(x_all.shape[0])
        if "labelled_rows" not in t[s]:
            labelled[s] = Codes(ae.encode, t[s]["x"])
            for_stats.append(Codes(ae.encode, x_all[sample]))
        else:
            needed = torch.unique(torch.cat([t[s]["labelled_rows"], sample]))  # sorted
            codes = Codes(ae.encode, x_all if needed.numel() == x_all.shape[0] else x_all[needed])
            labelled[s] = codes.subset(torch.searchsorted(needed, t[s]["labelled_rows"]))
            for_stats.append(codes.subset(torch.searchsorted(needed, sample)))
        x_stats.append(x_all if sample.numel() == x_all.shape[0] else x_all[sample])
    fmax = labelled["train"].fmax()
    scores = score_families(labelled["train"], tr["labels"], labelled["test"], te["labels"], fmax, families=families)
    stats = recon_stats(ae, torch.cat(x_stats), codes=for_stats)
    return scores, stats

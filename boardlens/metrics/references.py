"""Floors and ceilings beside every SAE, scored by the same metric code on the same eval set.

A coverage or reconstruction figure means little alone: a random SAE already scores well on
some families, and no dictionary of a layer can beat what that layer linearly encodes. So the
evaluator scores, once per evaluation set (the same games, splits and thresholds as the SAEs):

    linear_probe     ceiling: one logistic probe per BSP on the train split's activations; its
                     probabilities are the "latents" (B of them, one per BSP)
    mlp_neurons      the paper's baseline: the MLP neurons (post-GELU, d_mlp of them) of the
                     block whose output is the SAE layer, recomputed from the games' tokens
    random_sae-<F>   floor: an untrained paper-era ReLU SAE with the sweep's F latents (seed 0)
    random_init_sae  the paper's floor: an SAE trained on the random-init control model, scored
                     on that model's activations at the same positions

Each is a `Reference` (name -> family scores, and the unsupervised stats where it is an SAE).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from boardlens.metrics.codes import Codes
from boardlens.metrics.evalset import EvalSet, evaluate_tensors
from boardlens.metrics.supervised import FamilyScore, score_families
from boardlens.metrics.unsupervised import ReconStats
from boardlens.sae.archs.relu import AutoEncoder
from boardlens.sae.io import load_sae


class Reference(NamedTuple):
    name: str  # linear_probe, mlp_neurons, random_sae-<F> or random_init_sae
    scores: dict[str, FamilyScore]  # per family
    stats: ReconStats | None  # unsupervised stats (SAE references only)
    detail: str  # what exactly was scored (e.g. the floor SAE's file, the probe's size)


def identity(f: torch.Tensor) -> torch.Tensor:
    """The encoder of features that are already codes (probe outputs, MLP neurons)."""
    return f


def score_features(train: dict, test: dict, families: dict | None = None) -> dict[str, FamilyScore]:
    """Scores of precomputed features: train/test {'x': (N, F) features, 'labels': {fam: (N, B)}}."""
    tr, te = Codes(identity, train["x"]), Codes(identity, test["x"])
    return score_families(tr, train["labels"], te, test["labels"], tr.fmax(), families=families)


class BSPProbe(torch.nn.Module):
    """Per-BSP logistic probes on standardised activations: x (N, d) -> P(b holds) (N, B)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_bsps: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = torch.nn.Linear(mean.numel(), num_bsps)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def fit_bsp_probe(x: torch.Tensor, labels: torch.Tensor, iters: int = 100,
                  weight_decay: float = 1e-4) -> BSPProbe:
    """Fit probes x (N, d) -> labels (N, B) bool by full-batch L-BFGS on the mean BCE.

    A BSP that never (or always) holds in x gets a probe that says so with its bias.
    """
    torch.manual_seed(0)
    probe = BSPProbe(x.mean(0), x.std(0).clamp_min(1e-6), labels.shape[1])
    y = labels.float()
    opt = torch.optim.LBFGS(probe.linear.parameters(), lr=1, max_iter=iters, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(probe.logits(x), y)
        loss = loss + weight_decay * probe.linear.weight.pow(2).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    return probe.requires_grad_(False)


def probe_reference(t: dict, families: dict | None = None) -> Reference:
    """The linear-probe ceiling: probes fit on the train split, scored like SAE latents.

    t: split tensors as `EvalSet.tensors()` or `EvalSet.recompute()` give them.
    """
    names = list(t["train"]["labels"])
    labels = torch.cat([t["train"]["labels"][n] for n in names], 1)
    probe = fit_bsp_probe(t["train"]["x"], labels)
    with torch.no_grad():
        train = {"x": probe(t["train"]["x"]), "labels": t["train"]["labels"]}
        test = {"x": probe(t["test"]["x"]), "labels": t["test"]["labels"]}
    return Reference("linear_probe", score_features(train, test, families), None,
                     f"{labels.shape[1]} logistic probes (one per BSP), L-BFGS on "
                     f"{t['train']['x'].shape[0]} train positions")


def random_sae(d_in: int, d_sae: int, seed: int = 0) -> AutoEncoder:
    """An untrained paper-era ReLU SAE (Kaiming encoder, unit decoder columns) under `seed`."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return AutoEncoder(d_in, d_sae).eval()
    finally:
        torch.random.set_rng_state(state)


def sae_reference(name: str, ae, tensors: dict, detail: str, families: dict | None = None) -> Reference:
    scores, stats = evaluate_tensors(ae, tensors, families)
    return Reference(name, scores, stats, detail)


Recompute = Callable[[torch.Tensor], torch.Tensor]  # tokens (B, T) -> features (B, T, F)


def mlp_neurons(model, layer: int) -> Recompute:
    """tokens -> post-GELU MLP neurons of block `layer` (B, T, d_mlp), caught on c_proj's input."""
    seen: list[torch.Tensor] = []

    def hook(_module, inputs):
        seen.append(inputs[0])

    @torch.no_grad()
    def run(tokens: torch.Tensor) -> torch.Tensor:
        seen.clear()
        handle = model.transformer.h[layer].mlp.c_proj.register_forward_pre_hook(hook)
        try:
            model(tokens, stop_after=layer)
        finally:
            handle.remove()
        return seen[0].float()

    return run


def residual(model, layer: int) -> Recompute:
    """tokens -> residual stream after block `layer` (B, T, d), as the producer streams it."""

    @torch.no_grad()
    def run(tokens: torch.Tensor) -> torch.Tensor:
        _, resid = model(tokens, resid_layers=(layer,), stop_after=layer)
        return resid[layer].float()

    return run


def floor_saes(model_dir: str | Path) -> list[tuple[Path, dict]]:
    """SAEs trained on the model's random-init control: `<model_dir>/floor/*.safetensors`.

    Each `<name>.json` names the control model (`control_model`, relative to the model folder)
    and the layer it was trained on. Empty when the folder has none.
    """
    folder = Path(model_dir) / "floor"
    out = []
    for st in sorted(folder.glob("*.safetensors")) if folder.is_dir() else ():
        try:
            meta = json.loads(st.with_suffix(".json").read_text())
            int(meta["layer"]), str(meta["control_model"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"floor SAE {st}: its .json must name control_model and layer ({e!r})") from e
        out.append((st, meta))
    return out


class ReferenceSuite:
    """The references of one (full) eval set, each computed once.

    `model` (the producer's LM, or None) enables mlp_neurons; `floor` (from `floor_saes`) with a
    loader for its control model enables random_init_sae; random_sae is made per SAE size.
    """

    def __init__(self, evalset: EvalSet, model=None, layer: int = 0,
                 floor: list[tuple[Path, dict]] = (), load_control: Callable[[str], object] | None = None,
                 model_dir: str | Path | None = None) -> None:
        self.evalset, self.model, self.layer = evalset, model, layer
        self.floor, self.load_control, self.model_dir = list(floor), load_control, model_dir
        self._random: dict[tuple[int, int], Reference] = {}

    def fixed(self) -> list[tuple[str, Callable[[], Reference]]]:
        """(name, compute) of linear_probe, then mlp_neurons and random_init_sae where their
        inputs exist; each is computed on call, so a caller can survive one that fails."""
        out = [("linear_probe", lambda: probe_reference(self.evalset.tensors(), self.evalset.families))]
        if self.model is not None:
            out.append(("mlp_neurons", self._mlp))
        if self.floor and self.load_control is not None:
            out.append(("random_init_sae", self._random_init))
        return out

    def _mlp(self) -> Reference:
        t = self.evalset.recompute(mlp_neurons(self.model, self.layer))
        return Reference("mlp_neurons", score_features(t["train"], t["test"], self.evalset.families), None,
                         f"{t['train']['x'].shape[1]} post-GELU MLP neurons of block {self.layer}")

    def _random_init(self) -> Reference:
        """The best (by average reconstruction) of the floor SAEs, on the control's activations."""
        best = None
        cache: dict[tuple[str, int], dict] = {}
        for path, meta in self.floor:
            key = (str(meta["control_model"]), int(meta["layer"]))
            if key not in cache:
                control = self.load_control(str(Path(self.model_dir) / key[0]))
                cache[key] = self.evalset.recompute(residual(control, key[1]))
            ae = load_sae(path)[0]
            ref = sae_reference("random_init_sae", ae, cache[key],
                                f"{path.stem} trained on {key[0]} block {key[1]} ({meta.get('tokens', '?')} tokens)",
                                self.evalset.families)
            if best is None or _avg_rec(ref) > _avg_rec(best):
                best = ref
        return best

    def random_sae(self, d_in: int, d_sae: int) -> Reference:
        if (d_in, d_sae) not in self._random:
            self._random[(d_in, d_sae)] = sae_reference(
                f"random_sae-{d_sae}", random_sae(d_in, d_sae), self.evalset.tensors(),
                f"untrained ReLU SAE, {d_sae} latents, seed 0", self.evalset.families)
        return self._random[(d_in, d_sae)]


def _avg_rec(ref: Reference) -> float:
    return sum(s.reconstruction for s in ref.scores.values()) / max(len(ref.scores), 1)

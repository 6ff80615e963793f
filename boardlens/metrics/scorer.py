"""Everything measured of an SAE on one evaluation set, as one record: what the live evaluator
and `boardlens score` share.

    scorer = Scorer(evalset, game="othello", layer=5, model=lm, model_path="models/othello-gpt")
    refs = scorer.fixed_references()        # linear probe, MLP neurons, random-init SAE (once)
    rec = scorer.score("standard-4096-0.05", step, ae)
    ref = scorer.random_sae_reference(ae.d_in, ae.d_sae)

A record is a JSON-ready dict: `families` {family: FamilyScore fields}, `averages` {group:
{coverage, reconstruction}}, the unsupervised stats (`l0`, `var_explained`, ...), `loss`
(LossRecovered fields, when the model is known) and `eval_seconds`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from boardlens.metrics.evalset import EvalSet, evaluate_sae
from boardlens.metrics.loss_recovered import LossBaseline, LossRecovered
from boardlens.metrics.references import Reference, ReferenceSuite, floor_saes
from boardlens.registry import GAMES

log = logging.getLogger("boardlens")


class Scorer:
    """Scores SAEs and the floor/ceiling references on one eval set with the same code.

    model: the LM whose layer `layer` the activations come from (loss recovered and the
    model-based references), or None; model_path: its folder (for its floor/ and control);
    load_model: path -> LM, to load the random-init control.
    """

    def __init__(self, evalset: EvalSet, game: str, layer: int, model=None, model_path: str | None = None,
                 load_model: Callable | None = None) -> None:
        self.evalset, self.game, self.layer = evalset, game, layer
        self.model, self.model_path, self.load_model = model, model_path, load_model
        self.suite: ReferenceSuite | None = None
        self.loss_base: LossBaseline | None = None
        self.loss_base_games = 0

    def averages(self, scores: dict) -> dict[str, dict[str, float]]:
        return {group: {"coverage": float(np.mean([scores[f].coverage for f in members])),
                        "reconstruction": float(np.mean([scores[f].reconstruction for f in members]))}
                for group, members in GAMES[self.game].family_groups().items()}

    def score(self, name: str, step: int, ae) -> dict:
        """The record of one SAE (its input width must be the eval set's)."""
        if ae.d_in != self.evalset.width:
            raise ValueError(f"SAE {name}: input width {ae.d_in}, the activations' {self.evalset.width}")
        t0 = time.perf_counter()
        scores, stats = evaluate_sae(ae, self.evalset)
        loss = self.loss_recovered(ae)
        return {"time": time.time(), "sae": name, "step": step, "eval_seconds": round(time.perf_counter() - t0, 3),
                "games": self.evalset.progress(), "families": {k: v._asdict() for k, v in scores.items()},
                "averages": self.averages(scores), **stats._asdict(),
                **({"loss": loss._asdict()} if loss is not None else {})}

    def loss_recovered(self, ae) -> LossRecovered | None:
        """On the test split's games; None without a model (or with one that does not give the
        streamed activations)."""
        if self.model is None:
            return None
        games = self.evalset.games("test")
        if self.loss_base is None or self.loss_base_games != len(games):  # a partial set may grow
            if not self._model_matches(games[0]):
                self.model = None  # every figure it gave would be wrong
                return None
            self.loss_base = LossBaseline(self.model, self.layer, games)
            self.loss_base_games = len(games)
        return self.loss_base.score(ae.float().eval())

    @torch.no_grad()
    def _model_matches(self, game: tuple[torch.Tensor, torch.Tensor]) -> bool:
        """Does the model give the eval set's activations for a game's tokens (within bf16 noise)?"""
        tokens, acts = game
        _, resid = self.model(tokens[None], resid_layers=(self.layer,), stop_after=self.layer)
        err = float((resid[self.layer][0].float() - acts).norm() / acts.norm().clamp_min(1e-12))
        if err > 0.05:
            log.warning("model %s does not produce the activations of layer %d (relative error %.3f): "
                        "no loss recovered or model-based references", self.model_path, self.layer, err)
            return False
        return True

    def fixed_references(self) -> list[dict]:
        """Records of the references that do not depend on the SAEs (once per scorer)."""
        if self.suite is not None:
            return []
        floor = []
        if self.model is not None and self.model_path:
            try:
                floor = [(p, m) for p, m in floor_saes(self.model_path) if int(m["layer"]) == self.layer]
            except ValueError as e:
                log.warning("random_init_sae reference skipped: %s", e)
        self.suite = ReferenceSuite(self.evalset, self.model, self.layer, floor, self.load_model, self.model_path)
        out = []
        for name, compute in self.suite.fixed():
            try:
                out.append(self.reference_record(compute()))
            except (OSError, ValueError, KeyError) as e:  # a bad file costs one row
                log.warning("%s reference skipped: %s", name, e)
        return out

    def random_sae_reference(self, d_in: int, d_sae: int) -> dict:
        if self.suite is None:
            self.fixed_references()
        return self.reference_record(self.suite.random_sae(d_in, d_sae))

    def reference_record(self, ref: Reference) -> dict:
        return {"time": time.time(), "reference": ref.name, "detail": ref.detail, "games": self.evalset.progress(),
                "families": {k: v._asdict() for k, v in ref.scores.items()}, "averages": self.averages(ref.scores),
                **(ref.stats._asdict() if ref.stats is not None else {})}

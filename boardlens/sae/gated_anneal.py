"""Gated + p-anneal: the gated loss with its L1 gate term replaced by the annealed
mean(sum ReLU(pi_gate)^p) (dictionary_learning's GatedAnnealTrainer, 'Lp^p')."""

from __future__ import annotations

from dataclasses import dataclass

from boardlens.registry import TRAINERS
from boardlens.sae.gated import GatedOptions, GatedTrainer
from boardlens.sae.p_anneal import AnnealedPenalty, AnnealOptions


@dataclass(frozen=True)
class GatedAnnealOptions(AnnealOptions, GatedOptions):
    pass


class GatedAnnealTrainer(AnnealedPenalty, GatedTrainer):
    kind = "gated_anneal"
    Options = GatedAnnealOptions
    summary = "the gated loss with the annealed penalty"
    dl_trainer = "GatedAnnealTrainer"


TRAINERS.register(GatedAnnealTrainer.kind, GatedAnnealTrainer)

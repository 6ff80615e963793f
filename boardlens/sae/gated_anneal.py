"""Gated + p-anneal: the gated loss with its L1 gate term replaced by the annealed
mean(sum ReLU(pi_gate)^p) (dictionary_learning's GatedAnnealTrainer, 'Lp^p')."""

from __future__ import annotations

from boardlens.sae.gated import GatedTrainer
from boardlens.sae.p_anneal import AnnealedPenalty


class GatedAnnealTrainer(AnnealedPenalty, GatedTrainer):
    kind = "gated_anneal"

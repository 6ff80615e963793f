"""SAE architectures, one module each (its math, its tensors, its dictionary_learning and
SAELens mappings), registered in `boardlens.registry.ARCHS`; `base.SAEModule` is the interface."""

from __future__ import annotations

from boardlens.registry import ARCHS


def build_ae(arch: str, d_in: int, d_sae: int, **extra):
    """An SAE of the registered architecture `arch` (extra: e.g. k for the TopK family)."""
    return ARCHS[arch](d_in, d_sae, **extra)

"""BatchTopK SAE (Bussmann et al. 2412.06410): same tensors as TopK.

Training keeps the N*k largest latents of the whole batch (`batch_top_k`); inference uses the
learned global threshold, f = ReLU(.) * 1[ReLU(.) > threshold], so a row's code does not
depend on the rest of its batch (before the threshold is tracked it is -1: plain ReLU).
SAELens has no BatchTopK: it exports as "jumprelu" with threshold (F,) = max(theta, 0), i.e.
f = ReLU(pre) * 1[pre > threshold], the same function; k travels in the metadata (and an
import without it is refused rather than guessed: SAELens drops it on a re-save).
"""

from __future__ import annotations

import torch

from boardlens.registry import ARCHS
from boardlens.sae.archs.topk import TopKAutoEncoder


class BatchTopKAutoEncoder(TopKAutoEncoder):
    arch = "batch_topk"
    dl_class = "BatchTopKSAE"
    saelens_arch = "jumprelu"

    def batch_top_k(self, acts: torch.Tensor) -> torch.Tensor:
        flat = acts.flatten()
        top = flat.topk(int(self.k) * acts.shape[0], sorted=False)
        return torch.zeros_like(flat).scatter_(-1, top.indices, top.values).view_as(acts)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        acts = self.post_relu(x)
        return acts * (acts > self.threshold)

    def to_saelens(self, t):
        th = torch.full((self.d_sae,), max(float(t["threshold"]), 0.0))
        return {"b_enc": t["encoder.bias"], "b_dec": t["b_dec"], "threshold": th}, {}, {"batch_topk_k": int(t["k"])}

    @classmethod
    def from_saelens(cls, w, cfg):
        th = w["threshold"]
        if not bool((th == th[0]).all()):
            raise ValueError("per-latent JumpReLU thresholds differ; only one shared threshold (a BatchTopK "
                             "SAE) is supported")
        k = (cfg.get("metadata") or {}).get("batch_topk_k")
        if k is None:  # SAELens keeps only its own metadata fields when it re-saves an SAE
            raise ValueError("a JumpReLU SAE with one shared threshold (a BatchTopK SAE), but its k is not recorded "
                             "(SAELens drops metadata.batch_topk_k when it re-saves): add \"batch_topk_k\": K to "
                             "cfg.json's metadata, or re-export it from BoardLens")
        return {"encoder.bias": w["b_enc"], "b_dec": w["b_dec"], "k": torch.tensor(int(k), dtype=torch.int32),
                "threshold": th[0].clone()}


ARCHS.register(BatchTopKAutoEncoder.arch, BatchTopKAutoEncoder)

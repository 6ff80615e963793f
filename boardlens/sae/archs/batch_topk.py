"""BatchTopK SAE (Bussmann et al. 2412.06410): same tensors as TopK.

Training keeps the N*k largest latents of the whole batch (`batch_top_k`); inference uses the
learned global threshold, f = ReLU(.) * 1[ReLU(.) > threshold], so a row's code does not
depend on the rest of its batch (before the threshold is tracked it is -1: plain ReLU).
SAELens has no BatchTopK: it exports as "jumprelu" with threshold (F,) = max(theta, 0), i.e.
f = ReLU(pre) * 1[pre > threshold], the same function; k travels in the metadata.
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
        k = cfg.get("metadata", {}).get("batch_topk_k", 1)
        return {"encoder.bias": w["b_enc"], "b_dec": w["b_dec"], "k": torch.tensor(int(k), dtype=torch.int32),
                "threshold": th[0].clone()}


ARCHS.register(BatchTopKAutoEncoder.arch, BatchTopKAutoEncoder)

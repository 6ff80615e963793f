"""BatchTopK trainer (Bussmann et al. 2412.06410), as dictionary_learning's BatchTopKTrainer.

Like TopK, but the batch keeps its N*k largest latents overall (rows get different counts,
k on average); the threshold sample is the smallest positive latent kept in the batch, and
inference uses the threshold (see archs/batch_topk.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from boardlens.registry import TRAINERS
from boardlens.sae.topk import TopKOptions, TopKTrainer


@dataclass(frozen=True)
class BatchTopKOptions(TopKOptions):
    pass


class BatchTopKTrainer(TopKTrainer):
    kind = "batch_topk"
    arch = "batch_topk"
    Options = BatchTopKOptions
    summary = "as topk with the N*k largest latents of the batch; inference uses the tracked threshold"
    dl_trainer = "BatchTopKTrainer"

    def sparse_code(self, acts: torch.Tensor):
        """The batch's N*k largest as flat (values, column indices) grouped by row, + row offsets (N,)."""
        n, n_lat = acts.shape
        top = acts.flatten().topk(int(self.ae.k) * n, sorted=False)
        rows = torch.div(top.indices, n_lat, rounding_mode="floor")
        order = rows.argsort()
        counts = torch.bincount(rows, minlength=n)
        return top.values[order], (top.indices % n_lat)[order], counts.cumsum(0) - counts

    def min_active(self, vals: torch.Tensor) -> torch.Tensor:
        pos = vals[vals > 0]
        return pos.min() if pos.numel() else torch.zeros((), device=vals.device)


TRAINERS.register(BatchTopKTrainer.kind, BatchTopKTrainer)

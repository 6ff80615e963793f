"""Loss recovered: how much of the model's next-move loss survives the SAE in its residual.

With the SAE layer's output x replaced by the SAE's reconstruction, and by zeros:

    loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean)      (1 = no loss, 0 = as bad as zeros)
    KL = mean over positions of KL(p_clean || p_sae)                 (nats)

CE is the mean next-token cross-entropy (nats) of the tokens actually played, over every
position with a next token. The games are the evaluation set's, with the activations the
producer streamed for them, so only the blocks after the SAE layer run per SAE
(`GPT.forward_from`); the clean and zero-ablated passes are computed once per game set.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class LossRecovered(NamedTuple):
    ce_clean: float  # nats per predicted token
    ce_sae: float  # nats, the SAE layer's output replaced by the reconstruction
    ce_zero: float  # nats, replaced by zeros
    recovered: float  # (ce_zero - ce_sae) / (ce_zero - ce_clean)
    kl: float  # mean KL(clean || sae) per predicted token, nats


class LossBaseline:
    """The clean and zero-ablated passes over a fixed set of games; `score(ae)` adds one SAE's.

    games: (tokens (n,) int64, acts (n, d) at `layer`) per game; games of equal length run
    together in batches of `batch_games` (no padding: a causal model's positions need none).
    """

    @torch.no_grad()
    def __init__(self, model, layer: int, games: list[tuple[torch.Tensor, torch.Tensor]],
                 batch_games: int = 128) -> None:
        self.model, self.layer = model.eval(), layer
        device = next(model.parameters()).device
        by_len: dict[int, list[int]] = {}
        for i, (tok, _) in enumerate(games):
            if tok.numel() >= 2:  # a game needs a next token to be scored
                by_len.setdefault(tok.numel(), []).append(i)
        # Each group: (acts (b, n, d), next tokens (b, n-1), clean log-probs (b, n-1, V)).
        self.groups = []
        ce_clean = ce_zero = 0.0
        self.count = 0
        for idx in by_len.values():
            for c in range(0, len(idx), batch_games):
                part = idx[c : c + batch_games]
                x = torch.stack([games[i][1] for i in part]).to(device, torch.float32)
                target = torch.stack([games[i][0][1:] for i in part]).to(device)
                logp = self._logp(x)
                ce_clean += -logp.gather(-1, target[..., None]).sum().item()
                zero = self._logp(torch.zeros_like(x))
                ce_zero += -zero.gather(-1, target[..., None]).sum().item()
                self.count += target.numel()
                self.groups.append((x, target, logp))
        if self.count == 0:
            raise ValueError("no game with a next token to score")
        self.ce_clean, self.ce_zero = ce_clean / self.count, ce_zero / self.count

    def _logp(self, x: torch.Tensor) -> torch.Tensor:
        """Block `layer`'s output (b, n, d) -> log-probs of the next token at 0..n-2 (b, n-1, V)."""
        dtype = next(self.model.parameters()).dtype
        return F.log_softmax(self.model.forward_from(self.layer, x.to(dtype))[:, :-1].float(), dim=-1)

    @torch.no_grad()
    def score(self, ae) -> LossRecovered:
        """ae(x) -> (x_hat, f) on (N, d) rows, as every SAE here."""
        ce = kl = 0.0
        for x, target, clean in self.groups:
            b, n, d = x.shape
            x_hat = ae(x.reshape(b * n, d))[0].reshape(b, n, d)
            logp = self._logp(x_hat)
            ce += -logp.gather(-1, target[..., None]).sum().item()
            kl += (clean.exp() * (clean - logp)).sum().item()
        ce_sae = ce / self.count
        gap = self.ce_zero - self.ce_clean
        recovered = (self.ce_zero - ce_sae) / gap if abs(gap) > 1e-12 else float("nan")
        return LossRecovered(self.ce_clean, ce_sae, self.ce_zero, recovered, kl / self.count)

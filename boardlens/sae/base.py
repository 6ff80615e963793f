"""What every SAE trainer shares: optimiser, warmup, reconstruction loss, step statistics.

A trainer owns one SAE and its optimiser; `update(x)` takes one batch of activations
x (N, d) and does one optimiser step. Trainers of a sweep see the same batches.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from boardlens.sae.model import AutoEncoder
from boardlens.sae.optim import ConstrainedAdam, warmup_factor

RECON_LOSSES = ("l2", "mse")


def recon_loss(x: torch.Tensor, x_hat: torch.Tensor, kind: str) -> torch.Tensor:
    """'l2': mean ||x - x_hat||_2 (paper era, unsquared); 'mse': mean ||x - x_hat||^2."""
    sq = (x - x_hat).pow(2).sum(dim=-1)  # (N,)
    return sq.sqrt().mean() if kind == "l2" else sq.mean()


class StepStats(NamedTuple):
    """One training step's figures (python floats, already off the device)."""

    loss: float  # total loss that was minimised
    recon: float  # reconstruction term
    sparsity: float  # unscaled sparsity term (L1 or sum f^p)
    l0: float  # mean number of active latents per activation
    var_explained: float  # 1 - sum Var(x - x_hat) / sum Var(x), on this batch
    dead_fraction: float  # latents that have not fired in the last `dead_window_tokens`


class SAETrainer:
    """Base class: subclasses implement `sparsity(f)` and may extend `after_step`."""

    kind = "base"

    def __init__(
        self,
        name: str,
        d_in: int,
        d_sae: int,
        penalty: float,
        lr: float = 3e-4,
        warmup_steps: int = 1000,
        recon: str = "l2",
        seed: int = 0,
        dead_window_tokens: int = 1_000_000,
        device: str | torch.device = "cpu",
    ) -> None:
        if recon not in RECON_LOSSES:
            raise ValueError(f"recon must be one of {RECON_LOSSES}, got {recon!r}")
        if penalty < 0 or lr <= 0:
            raise ValueError(f"penalty must be >= 0 and lr > 0, got {penalty}, {lr}")
        self.name, self.penalty, self.lr, self.recon = name, penalty, lr, recon
        self.warmup_steps, self.seed = warmup_steps, seed
        self.dead_window_tokens = dead_window_tokens
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # weights depend on the seed only, not on sweep order
        self.ae = AutoEncoder(d_in, d_sae).to(device)
        torch.random.set_rng_state(gen_state)
        self.opt = ConstrainedAdam(self.ae.parameters(), self.ae.constrained_params(), lr=lr)
        self.step = 0
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)

    # --- subclass hooks -------------------------------------------------------------
    def sparsity(self, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty_coeff(self) -> float:
        return self.penalty

    def after_step(self, f: torch.Tensor) -> None:
        """Called with the batch's latents (detached) after each optimiser step."""

    def hyperparams(self) -> dict:
        return {"kind": self.kind, "penalty": self.penalty, "lr": self.lr, "recon": self.recon,
                "warmup_steps": self.warmup_steps, "seed": self.seed,
                "d_in": self.ae.d_in, "d_sae": self.ae.d_sae}

    def schedule_state(self) -> dict[str, float]:
        """Scalars worth exporting (p, alpha for annealing trainers)."""
        return {}

    # --- the step -------------------------------------------------------------------
    def update(self, x: torch.Tensor) -> StepStats:
        """One optimiser step on x (N, d)."""
        for g in self.opt.param_groups:
            g["lr"] = self.lr * warmup_factor(self.step, self.warmup_steps)
        x_hat, f = self.ae(x)
        recon = recon_loss(x, x_hat, self.recon)
        sparsity = self.sparsity(f)
        loss = recon + self.penalty_coeff() * sparsity
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        with torch.no_grad():
            f = f.detach()
            fired = (f > 0).any(dim=0)
            self.tokens_since_fired += x.shape[0]
            self.tokens_since_fired[fired] = 0
            l0 = (f > 0).float().sum(-1).mean()
            resid = (x - x_hat.detach()).var(dim=0).sum()
            fve = 1 - resid / x.var(dim=0).sum().clamp_min(1e-12)
        self.after_step(f)
        dead = (self.tokens_since_fired >= self.dead_window_tokens).float().mean()
        return StepStats(loss.item(), recon.item(), sparsity.item(), l0.item(), fve.item(), dead.item())

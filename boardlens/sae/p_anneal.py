"""p-annealing (the paper's trainer): sparsity term mean(sum_i f_i^p), p annealed 1 -> p_end.

Schedule (as the paper's code): `n_updates` update steps evenly spaced (as integers) from
`anneal_start` to `total_steps` inclusive, p values evenly spaced from p_start to p_end.
At the k-th update step p becomes p_values[k]; from the second update on, alpha is first
multiplied by mean(sum f^p_old) / mean(sum f^p_new) over the last `queue_len` batches, so
the penalty is continuous across the switch. The last update falls on step == total_steps,
so p_end is only reached by a run that goes past its planned length (upstream quirk).
`AnnealedPenalty` adds this to any trainer whose sparsity term is a sum over latents
(p-anneal on the ReLU SAE here, Gated + p-anneal in gated_anneal.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from boardlens.registry import TRAINERS
from boardlens.sae.base import Losses
from boardlens.sae.standard import StandardOptions, StandardTrainer


def lp_p(f: torch.Tensor, p: float) -> torch.Tensor:
    """mean over rows of sum_i f_i^p (f >= 0): the 'Lp^p' sparsity term."""
    return f.pow(p).sum(dim=-1).mean()


class PAnnealSchedule:
    """p, alpha and the penalty queue; `observe` once per step after the optimiser step."""

    def __init__(self, total_steps: int, alpha: float, anneal_start: int, p_start: float, p_end: float,
                 n_updates: int, queue_len: int) -> None:
        if not 0 <= anneal_start <= total_steps:
            raise ValueError(f"anneal_start must be in 0..total_steps ({total_steps}), got {anneal_start}")
        if n_updates < 2 or not 0 < p_end <= p_start or queue_len < 1:
            raise ValueError("need n_updates >= 2, 0 < p_end <= p_start and queue_len >= 1")
        self.p_start, self.p_end, self.queue_len = p_start, p_end, queue_len
        self.update_steps = torch.linspace(anneal_start, total_steps, n_updates).long().tolist()
        if len(set(self.update_steps)) != n_updates:
            raise ValueError(f"{n_updates} p updates do not fit between steps {anneal_start} and {total_steps}")
        self.p_values = torch.linspace(p_start, p_end, n_updates).tolist()
        self.p = p_start
        self.next_p: float | None = None
        self.alpha = alpha
        self.k = 0  # updates done
        self.queue: list[tuple[float, float]] = []  # (sum f^p, sum f^next_p) of recent batches

    def observe(self, step: int, lp_now: torch.Tensor, f: torch.Tensor) -> None:
        """After 0-based step `step`, whose sparsity term was lp_now = lp_p(f, p)."""
        nxt = self.update_steps[self.k] if self.k < len(self.update_steps) else None
        # Only the last queue_len entries before an update are ever used: skip the rest
        # (a second f^p pass over (N, F) per step otherwise).
        if self.next_p is not None and nxt is not None and step > nxt - self.queue_len:
            self.queue.append((lp_now.item(), lp_p(f, self.next_p).item()))
            self.queue = self.queue[-self.queue_len :]
        if nxt is not None and step >= nxt:
            if self.next_p is not None and self.queue:
                # float32 means of each column, as the reference computes them (a float64
                # mean drifts by 1e-7 and Adam amplifies that).
                now, new = (torch.tensor([q[i] for q in self.queue]).mean() for i in (0, 1))
                if new > 0:
                    self.alpha *= (now / new).item()
            self.p = self.p_values[self.k]
            self.next_p = self.p_values[self.k + 1] if self.k + 1 < len(self.p_values) else self.p_end
            self.k += 1

    def state_dict(self) -> dict:
        return {"p": self.p, "next_p": self.next_p, "alpha": self.alpha, "k": self.k,
                "queue": [list(q) for q in self.queue]}

    def load_state_dict(self, s: dict) -> None:
        self.p, self.next_p, self.alpha, self.k = s["p"], s["next_p"], s["alpha"], s["k"]
        self.queue = [tuple(q) for q in s["queue"]]


@dataclass(frozen=True)
class AnnealOptions:
    """Options of the p-annealing kinds (mixed into their Options)."""

    anneal_start: int | None = None
    """Step of the first p update (none = min(10000, steps / 3))."""
    p_start: float = 1.0
    """Initial p of the sum f^p penalty."""
    p_end: float = 0.2
    """Final p."""
    n_updates: int = 10
    """p updates, evenly spaced from anneal_start to the last step."""
    queue_len: int = 10
    """Batches averaged to rescale alpha at each p update (keeps the penalty continuous)."""

    def __post_init__(self) -> None:
        super().__post_init__()  # the trainer options this is mixed into
        if self.n_updates < 2 or not 0 < self.p_end <= self.p_start or self.queue_len < 1:
            raise ValueError("need n_updates >= 2, 0 < p_end <= p_start and queue_len >= 1")


class AnnealedPenalty:
    """Mixin (listed before the trainer class): the trainer's sparsity term becomes the annealed one."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        o = self.opts
        self.anneal_start = min(10_000, self.total_steps // 3) if o.anneal_start is None else o.anneal_start
        self.sched = PAnnealSchedule(self.total_steps, self.penalty, self.anneal_start, o.p_start, o.p_end,
                                     o.n_updates, o.queue_len)

    def sparsity(self, f: torch.Tensor) -> torch.Tensor:
        return lp_p(f, self.sched.p)

    def penalty_coeff(self) -> float:
        return self.sched.alpha

    def after_step(self, losses: Losses) -> None:
        super().after_step(losses)
        self.sched.observe(self.step - 1, losses.sparsity, losses.penalised)

    def resolved_options(self) -> dict:
        return {**super().resolved_options(), "anneal_start": self.anneal_start}

    def schedule_state(self) -> dict[str, float]:
        return {"p": self.sched.p, "alpha": self.sched.alpha}

    def extra_state(self) -> dict:
        return {**super().extra_state(), "schedule": self.sched.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.sched.load_state_dict(state["schedule"])


@dataclass(frozen=True)
class PAnnealOptions(AnnealOptions, StandardOptions):
    pass


class PAnnealTrainer(AnnealedPenalty, StandardTrainer):
    """ReLU SAE, loss = recon + alpha * mean(sum_i f_i^p) with p annealed."""

    kind = "p_anneal"
    Options = PAnnealOptions
    summary = "recon + alpha mean sum f^p, p annealed 1 -> p_end"
    dl_trainer = "PAnnealTrainer"


TRAINERS.register(PAnnealTrainer.kind, PAnnealTrainer)

"""p-annealing trainer: loss = recon + alpha * mean(sum_i f_i^p), p annealed 1 -> p_end.

Schedule (as the paper's code): `n_updates` update steps evenly spaced (as integers) from
`anneal_start` to `total_steps` inclusive, p values evenly spaced from p_start to p_end.
At the k-th update step p becomes p_values[k]; from the second update on, alpha is first
multiplied by mean(sum f^p_old) / mean(sum f^p_new) over the last `queue_len` batches, so
the penalty is continuous across the switch. The last update falls on step == total_steps,
so p_end is only reached by a run that goes past its planned length (upstream quirk).
"""

from __future__ import annotations

import torch

from boardlens.sae.base import SAETrainer


class PAnnealTrainer(SAETrainer):
    kind = "p_anneal"

    def __init__(
        self,
        *args,
        total_steps: int,
        anneal_start: int = 10_000,
        p_start: float = 1.0,
        p_end: float = 0.2,
        n_updates: int = 10,
        queue_len: int = 10,
        **kw,
    ) -> None:
        super().__init__(*args, **kw)
        if not 0 <= anneal_start <= total_steps:
            raise ValueError(f"anneal_start must be in 0..total_steps, got {anneal_start}")
        if n_updates < 2 or not 0 < p_end <= p_start:
            raise ValueError("need n_updates >= 2 and 0 < p_end <= p_start")
        self.total_steps, self.anneal_start = total_steps, anneal_start
        self.p_start, self.p_end, self.queue_len = p_start, p_end, queue_len
        self.update_steps = torch.linspace(anneal_start, total_steps, n_updates).long().tolist()
        self.p_values = torch.linspace(p_start, p_end, n_updates).tolist()
        self.p = p_start
        self.next_p: float | None = None
        self.alpha = self.penalty
        self.k = 0  # updates done
        self.queue: list[tuple[float, float]] = []  # (sum f^p, sum f^next_p) per recent batch

    @staticmethod
    def lp_p(f: torch.Tensor, p: float) -> torch.Tensor:
        return f.pow(p).sum(dim=-1).mean()

    def sparsity(self, f: torch.Tensor) -> torch.Tensor:
        return self.lp_p(f, self.p)

    def penalty_coeff(self) -> float:
        return self.alpha

    def after_step(self, f: torch.Tensor) -> None:
        # `self.step` is now the number of steps done; upstream checks the 0-based step index.
        step = self.step - 1
        if self.next_p is not None:
            self.queue.append((self.lp_p(f, self.p).item(), self.lp_p(f, self.next_p).item()))
            self.queue = self.queue[-self.queue_len :]
        if self.k < len(self.update_steps) and step >= self.update_steps[self.k]:
            if self.next_p is not None and self.queue:
                old = sum(q[0] for q in self.queue) / len(self.queue)
                new = sum(q[1] for q in self.queue) / len(self.queue)
                if new > 0:
                    self.alpha *= old / new
            self.p = self.p_values[self.k]
            nxt = self.k + 1
            self.next_p = self.p_values[nxt] if nxt < len(self.p_values) else self.p_end
            self.k += 1

    def hyperparams(self) -> dict:
        return {**super().hyperparams(), "total_steps": self.total_steps,
                "anneal_start": self.anneal_start, "p_start": self.p_start, "p_end": self.p_end,
                "n_updates": len(self.update_steps), "queue_len": self.queue_len}

    def schedule_state(self) -> dict[str, float]:
        return {"p": self.p, "alpha": self.alpha}

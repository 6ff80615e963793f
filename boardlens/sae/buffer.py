"""Shuffle buffer for a stream of activations.

Positions of one game (and consecutive games from one producer batch) are strongly
correlated, so training batches are drawn at random from a pool. Like dictionary_learning's
ActivationBuffer: activations are pushed into free slots; batches are sampled uniformly,
without replacement, from the unread slots; each activation is served exactly once. The
trainer only draws while at least `min_unread` are waiting, so every batch mixes activations
from many producer messages.
"""

from __future__ import annotations

import torch


class ShuffleBuffer:
    def __init__(self, capacity: int, d: int, min_unread: int | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity, self.d = capacity, d
        self.min_unread = capacity // 2 if min_unread is None else min_unread
        if not 0 <= self.min_unread <= capacity:
            raise ValueError(f"min_unread must be in 0..capacity, got {self.min_unread}")
        self.data = torch.empty(capacity, d, dtype=dtype, device=device)  # (capacity, d)
        self.unread = torch.empty(0, dtype=torch.long)  # slot ids holding unread rows
        self.free = torch.arange(capacity)  # slot ids free to write
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return int(self.unread.numel())

    @property
    def space(self) -> int:
        return int(self.free.numel())

    def push(self, x: torch.Tensor) -> int:
        """Copy rows of x (N, d) into free slots; returns how many fit (the caller keeps the rest)."""
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"expected (N, {self.d}), got {tuple(x.shape)}")
        n = min(x.shape[0], self.space)
        slots, self.free = self.free[:n], self.free[n:]
        self.data[slots] = x[:n].to(self.data.dtype)
        self.unread = torch.cat([self.unread, slots])
        return n

    def ready(self, batch_size: int) -> bool:
        return len(self) >= max(batch_size, self.min_unread)

    def pop(self, batch_size: int) -> torch.Tensor:
        """A random batch (batch_size, d) of unread rows (a copy; slots are freed)."""
        if batch_size > len(self):
            raise ValueError(f"only {len(self)} unread rows, asked for {batch_size}")
        pick = torch.randperm(len(self), generator=self.gen)[:batch_size]
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[pick] = False
        slots = self.unread[pick]
        self.unread = self.unread[keep]
        self.free = torch.cat([self.free, slots])
        return self.data[slots]

    def state_dict(self) -> dict:
        """What the next pops depend on: unread rows and slot order, free slot order, the RNG."""
        return {"capacity": self.capacity, "d": self.d, "min_unread": self.min_unread,
                "unread": self.unread.clone(), "free": self.free.clone(),
                "rows": self.data[self.unread].cpu(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if (state["capacity"], state["d"], state["min_unread"]) != (self.capacity, self.d, self.min_unread):
            raise ValueError(f"shuffle buffer was {state['capacity']} x {state['d']} (min_unread "
                             f"{state['min_unread']}), now {self.capacity} x {self.d} ({self.min_unread})")
        self.unread, self.free = state["unread"].clone(), state["free"].clone()
        self.data[self.unread] = state["rows"].to(self.data.device, self.data.dtype)
        self.gen.set_state(state["gen"])

"""What every SAE trainer shares: the step, schedules, statistics, resampling, exact state.

A trainer owns one SAE and its optimiser; `update(x)` takes one batch of activations x (N, d)
and does one optimiser step. Trainers of a sweep see the same batches. A subclass says which
architecture it trains (`arch`), its Adam betas / gradient clipping, and its loss terms
(`losses`); it may extend `after_step` (schedules) and `extra_state` (what resume needs).

`state_dict()` holds everything the next step depends on (weights, Adam moments and step
counts, the trainer's step, firing counters, schedule state, the resampling RNG, the
normalisation scale), so a trainer rebuilt from it continues bit-identically on CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch

from boardlens.sae.archs import build_ae
from boardlens.sae.optim import ConstrainedAdam, lr_factor, ramp

RECON_LOSSES = ("l2", "mse")


@torch.no_grad()
def firing(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f (N, F) >= 0 -> (fired (F,) bool, mean active latents per row).

    sign().sum(0) is one cheap pass; (f > 0).sum() and .any(0) on a bool tensor cost 3x more
    on CPU (measured at N=4096, F=4096).
    """
    counts = f.sign().sum(dim=0)  # (F,) rows in which each latent fired
    return counts > 0, counts.sum() / f.shape[0]


def recon_loss(x: torch.Tensor, x_hat: torch.Tensor, kind: str) -> torch.Tensor:
    """'l2': mean ||x - x_hat||_2 (paper era, unsquared); 'mse': mean ||x - x_hat||^2."""
    sq = (x - x_hat).pow(2).sum(dim=-1)  # (N,)
    return sq.sqrt().mean() if kind == "l2" else sq.mean()


class Losses(NamedTuple):
    """One batch's loss terms (tensors; `total` carries the graph) and what fired."""

    total: torch.Tensor
    recon: torch.Tensor  # reconstruction term
    sparsity: torch.Tensor  # unscaled sparsity term (L1, sum f^p; 0 for TopK)
    aux: torch.Tensor  # auxiliary term (gated: gate reconstruction; TopK: AuxK; else 0)
    x_hat: torch.Tensor  # (N, d)
    active: torch.Tensor  # (F,) bool: which latents fired (> 0) on this batch
    l0: torch.Tensor  # mean active latents per row
    penalised: torch.Tensor | None = None  # (N, F) detached: what the sparsity term is taken of


class StepStats(NamedTuple):
    """One training step's figures (python floats, already off the device)."""

    loss: float  # total loss that was minimised
    recon: float  # reconstruction term
    sparsity: float  # unscaled sparsity term
    aux: float  # auxiliary term
    l0: float  # mean number of active latents per activation
    var_explained: float  # 1 - sum Var(x - x_hat) / sum Var(x), on this batch
    dead_fraction: float  # latents that have not fired in the last `dead_window_tokens`


@dataclass(frozen=True)
class TrainerOptions:
    """The options every trainer kind takes. Each kind subclasses it with its own: the one
    source of its constructor arguments, defaults, spec parsing (`kind:key=value`), the
    hyperparameters in checkpoints (and so the resume check), `boardlens sae options` and the
    README's trainer tables."""

    d_sae: int = 4096
    """Latents in the dictionary."""
    lr: float = 3e-4
    """Peak Adam learning rate."""
    warmup_steps: int = 1000
    """Linear LR warmup steps."""
    decay_start: int | None = None
    """Step from which the LR decays linearly to 0 at the last step (none = constant)."""
    sparsity_warmup_steps: int = 0
    """Steps over which the sparsity term ramps up from 0."""
    recon: str = ""
    """Reconstruction loss: l2 (mean unsquared norm, paper era) or mse; empty = the kind's default."""
    seed: int = 0
    """Seed of the weights and resampling draws (a sweep gives trainer i seed i unless set)."""
    normalize: bool = False
    """Scale activations to unit mean squared norm (factor from the first batch); folded back on export."""
    precision: str = "fp32"
    """fp32, or bf16: forward and backward under bfloat16 autocast (weights, Adam and the loss's
    reductions stay fp32). Faster only where matmuls have bf16 units (GPUs, AVX-512 BF16 / AMX CPUs)."""

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.recon and self.recon not in RECON_LOSSES:
            raise ValueError(f"recon must be one of {RECON_LOSSES}, got {self.recon!r}")
        if self.d_sae < 1 or self.lr <= 0 or self.warmup_steps < 0 or self.sparsity_warmup_steps < 0:
            raise ValueError(f"need d_sae >= 1, lr > 0 and warmups >= 0; got {self.d_sae}, {self.lr}, "
                             f"{self.warmup_steps}, {self.sparsity_warmup_steps}")


@dataclass(frozen=True)
class PenaltyOptions(TrainerOptions):
    """Options of the kinds with a sparsity penalty."""

    penalty: float = 0.05
    """Sparsity coefficient (lambda; the initial alpha of the annealing kinds)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.penalty < 0:
            raise ValueError(f"penalty must be >= 0, got {self.penalty}")


class SAETrainer:
    """Base class of the trainers (see the module docstring). A kind sets `Options`, `kind`,
    `arch`, `summary` and its hooks, and registers itself in `boardlens.registry.TRAINERS`."""

    kind = "base"
    arch = "relu"
    Options: ClassVar[type[TrainerOptions]] = TrainerOptions
    summary: ClassVar[str] = ""
    """One line for the README's table: the loss and what is special."""
    dl_trainer: ClassVar[str] = ""
    """dictionary_learning's class for this kind ('' = none), named in exported configs."""
    betas: tuple[float, float] = (0.9, 0.999)
    clip_norm: float | None = None
    default_recon = "l2"

    def __init__(self, name: str, d_in: int, options: TrainerOptions | None = None, *, total_steps: int,
                 device: str | torch.device = "cpu", dead_window_tokens: int = 1_000_000, **overrides) -> None:
        """options: this kind's Options (its defaults if None); overrides: fields to replace."""
        opts = dataclasses.replace(options or self.Options(), **overrides)
        if type(opts) is not self.Options:
            raise TypeError(f"{self.kind} takes {self.Options.__name__}, got {type(opts).__name__}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if opts.decay_start is not None and not opts.warmup_steps <= opts.decay_start < total_steps:
            raise ValueError(f"decay_start must be in warmup_steps..total_steps-1, got {opts.decay_start}")
        self.opts, self.name, self.total_steps = opts, name, total_steps
        self.recon = opts.recon or self.default_recon
        self.penalty = getattr(opts, "penalty", 0.0)
        self.resample_every = getattr(opts, "resample_every", 0)
        self.lr, self.warmup_steps, self.decay_start = opts.lr, opts.warmup_steps, opts.decay_start
        self.sparsity_warmup_steps, self.seed, self.normalize = opts.sparsity_warmup_steps, opts.seed, opts.normalize
        self.dead_window_tokens = dead_window_tokens
        with torch.random.fork_rng(devices=[]):  # weights depend on the seed only, not on sweep order
            torch.manual_seed(opts.seed)
            self.ae = build_ae(self.arch, d_in, opts.d_sae, **self.arch_options()).to(device)
        self.opt = ConstrainedAdam(self.ae.parameters(), [self.ae.decoder_weight], clip_norm=self.clip_norm,
                                   lr=opts.lr, betas=self.betas)
        self.gen = torch.Generator(device=torch.device(device)).manual_seed(opts.seed)  # resampling draws
        self.step = 0
        self.skipped_steps = 0  # batches whose loss or gradient was not finite (no update)
        self.tokens_since_fired = torch.zeros(opts.d_sae, dtype=torch.long, device=device)
        self.norm_scale = 1.0  # activations are divided by it (set from the first batch if normalize)
        self.resampled = 0  # latents re-initialised so far

    # --- subclass hooks -------------------------------------------------------------
    def losses(self, x: torch.Tensor) -> Losses:
        raise NotImplementedError

    def penalty_coeff(self) -> float:
        """Coefficient of the sparsity term (lambda; alpha for annealing trainers)."""
        return self.penalty

    def sparsity_scale(self) -> float:
        """Multiplier of the sparsity term at this step (sparsity warmup)."""
        return ramp(self.step, self.sparsity_warmup_steps)

    def first_batch(self, x: torch.Tensor) -> None:
        """Called once with the (normalised) first batch before step 0."""

    def after_step(self, losses: Losses) -> None:
        """Called after each optimiser step (self.step already counts it)."""

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def arch_options(self) -> dict:
        """The architecture's constructor arguments beyond the sizes (TopK: k)."""
        return {}

    def resolved_options(self) -> dict:
        """The options as trained: defaults that depend on the kind or the run filled in."""
        return {**dataclasses.asdict(self.opts), "recon": self.recon}

    def hyperparams(self) -> dict:
        """What the run was trained with: checkpoint metadata and the resume check."""
        return {"kind": self.kind, "arch": self.arch, "total_steps": self.total_steps, "d_in": self.ae.d_in,
                **self.resolved_options()}

    def schedule_state(self) -> dict[str, float]:
        """Scalars worth exporting (p, alpha for annealing trainers)."""
        return {}

    # --- the step -------------------------------------------------------------------
    def update(self, x: torch.Tensor, x_var: torch.Tensor | None = None) -> StepStats | None:
        """One optimiser step on x (N, d); x_var = x.var(0).sum() if the caller has it.

        Returns None, and changes nothing but `skipped_steps`, when the loss or a gradient is
        not finite (a NaN that reached the weights would stay there and be checkpointed)."""
        if self.step == 0 and not bool(torch.isfinite(x).all()):  # would poison the init
            self.skipped_steps += 1
            return None
        if self.step == 0:
            if self.normalize:  # unit mean squared norm (dictionary_learning's normalisation)
                self.norm_scale = x.pow(2).sum(-1).mean().sqrt().item()
            self.first_batch(x / self.norm_scale)
        if self.normalize:
            x = x / self.norm_scale
            x_var = None if x_var is None else x_var / self.norm_scale**2
        for g in self.opt.param_groups:
            g["lr"] = self.lr * lr_factor(self.step, self.warmup_steps, self.total_steps, self.decay_start,
                                          self.resample_every)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.opts.precision == "bf16"):
            losses = self.losses(x)
        self.opt.zero_grad(set_to_none=True)
        losses.total.backward()
        grads = [p.grad for p in self.ae.parameters() if p.grad is not None]
        # One scalar, one sync: NaN/Inf anywhere in the loss or the gradients propagates to it.
        check = losses.total.detach() + torch.stack(torch._foreach_norm(grads)).sum()
        if not bool(torch.isfinite(check)):
            self.opt.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return None
        self.opt.step()
        self.step += 1
        with torch.no_grad():
            self.tokens_since_fired += x.shape[0]
            self.tokens_since_fired[losses.active] = 0
            resid = (x - losses.x_hat.detach()).var(dim=0).sum()
            x_var = x.var(dim=0).sum() if x_var is None else x_var
            fve = 1 - resid / x_var.clamp_min(1e-12)
        self.after_step(losses)
        if self.resample_every and self.step % self.resample_every == 0:
            self.resample(x)
        dead = (self.tokens_since_fired >= self.dead_window_tokens).float().mean()
        # One transfer for all figures (one sync on a GPU).
        figs = torch.stack([losses.total.detach(), losses.recon.detach(), losses.sparsity.detach(),
                            losses.aux.detach(), losses.l0.float(), fve, dead]).tolist()
        return StepStats(*figs)

    @torch.no_grad()
    def resample(self, x: torch.Tensor) -> None:
        """Re-initialise latents silent for the last resample_every / 2 steps (Anthropic's recipe,
        as dictionary_learning's StandardTrainer): encoder row = a high-loss input scaled to 0.2 x
        the mean alive encoder norm, decoder column = that input normalised, bias 0, Adam state 0."""
        dead = self.tokens_since_fired > (self.resample_every // 2) * x.shape[0]
        n = int(dead.sum())
        if n == 0:
            return
        err = (x - self.ae(x)[0]).norm(dim=-1)  # (N,)
        n = min(n, x.shape[0])
        pick = torch.multinomial(err, n, replacement=False, generator=self.gen)
        vecs = x[pick]  # (n, d)
        dead_ids = dead.nonzero().squeeze(1)[:n]
        enc, dec = self.ae.encoder, self.ae.decoder_weight
        alive_norm = enc.weight[~dead].norm(dim=-1).mean() if bool((~dead).any()) else 1.0
        enc.weight[dead_ids] = vecs * alive_norm * 0.2
        dec[:, dead_ids] = (vecs / vecs.norm(dim=-1, keepdim=True)).T
        enc.bias[dead_ids] = 0.0
        for p, by_column in ((enc.weight, False), (enc.bias, False), (dec, True)):
            state = self.opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    if by_column:
                        state[key][:, dead_ids] = 0.0
                    else:
                        state[key][dead_ids] = 0.0
        self.tokens_since_fired[dead_ids] = 0
        self.resampled += n

    # --- export and exact state -----------------------------------------------------
    def export_ae(self) -> torch.nn.Module:
        """The SAE for raw (unnormalised) activations: a copy with the scale folded into biases."""
        if not self.normalize or self.norm_scale == 1.0:
            return self.ae
        ae = copy.deepcopy(self.ae)
        ae.scale_biases(self.norm_scale)
        return ae

    def state_dict(self) -> dict:
        return {"hyperparams": self.hyperparams(), "step": self.step, "ae": self.ae.state_dict(),
                "opt": self.opt.state_dict(), "tokens_since_fired": self.tokens_since_fired,
                "gen": self.gen.get_state(), "norm_scale": self.norm_scale, "resampled": self.resampled,
                "skipped_steps": self.skipped_steps, "extra": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        mine, theirs = _canon(self.hyperparams()), _legacy(_canon(state["hyperparams"]), self.hyperparams())
        if mine != theirs:
            diff = {k: (theirs.get(k), mine.get(k)) for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
            raise ValueError(f"SAE {self.name!r}: the checkpoint was trained with other settings "
                             f"(checkpoint, now): {diff}")
        self.ae.load_state_dict(state["ae"])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
        self.gen.set_state(state["gen"])
        self.norm_scale = float(state["norm_scale"])
        self.resampled = int(state["resampled"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.load_extra_state(state["extra"])


def _legacy(theirs: dict, mine: dict) -> dict:
    """Checkpoints of 0.1.0 (before per-kind options) gave every kind penalty 0 and
    resample_every 0, whether it had them or not: drop those where this kind has none."""
    return {k: v for k, v in theirs.items()
            if k in mine or k not in ("penalty", "resample_every") or v not in (0, 0.0)}


def _canon(d: dict) -> dict:
    """Hyperparameters as JSON would give them back (tuples -> lists, ints stay ints)."""
    return json.loads(json.dumps(d))


"""Train a game LM on freshly generated games, with periodic checkpoints and resume.

    boardlens lm train --game othello --run-dir runs/lm-othello --steps 6000
    boardlens lm train --game chess --run-dir runs/lm-chess --n-layer 8 --sae-layer 5

Othello trains on random legal games (synthetic, as OthelloGPT was) and is scored by top-1
legal-move accuracy; chess trains on random legal games cut to 256 characters and is scored by
the fraction of sampled continuations that are legal moves.

A training checkpoint (`train_state.pt`: weights, AdamW moments, step, RNG states) is written
atomically every `checkpoint_every` steps and on SIGTERM/Ctrl-C; `--resume` continues from it. The
best model by held-out legal-move accuracy is also exported in the bundled format
(`<out>/model/`), ready for `models/`; with board heads (boardlens.lm.board_heads) it is the
newest evaluated one instead, so that a finished run exports the end of the heads' anneal.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from boardlens.atomic import write_atomic, write_json
from boardlens.files import load_torch
from boardlens.lm.board_heads import BoardHead, BoardHeads
from boardlens.lm.checkpoint import CheckpointError, save_model
from boardlens.lm.model import GPT, GPTConfig
from boardlens.progress import Progress
from boardlens.registry import GAMES


def lm_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy. logits (B, T, V); target (B, T) ids (-100 = none) or (B, T, V) probs.

    Probability rows that are all zero (no next move) are skipped.
    """
    if target.dtype.is_floating_point:
        keep = target.sum(-1) > 0  # (B, T)
        logp = F.log_softmax(logits[keep].float(), dim=-1)  # (n, V)
        return -(target[keep] * logp).sum(-1).mean()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100)


def train_step(model: GPT, forward, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               bf16: bool = False, board: torch.Tensor | None = None, heads: BoardHeads | None = None,
               head_weights: list[float] = ()) -> tuple[torch.Tensor, list[float]]:
    """One optimiser step (forward via `forward`, the model or its compiled wrapper; grad-norm
    clip 1.0 over model and heads) -> (the LM loss, each board head's loss). bf16: forward
    under bf16 autocast on x's device. heads: auxiliary board heads, trained on `board`
    (B, T, cells) with head_weights beside the LM loss."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits, resid = forward(x, resid_layers=heads.layers) if heads is not None else forward(x)
    loss = lm_loss(logits, y)
    aux = heads.losses(resid, board) if heads is not None else []
    total = loss + sum(w * a for w, a in zip(head_weights, aux, strict=True))
    opt.zero_grad(set_to_none=True)
    total.backward()
    params = [*model.parameters(), *(heads.parameters() if heads is not None else ())]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.detach(), [float(a.detach()) for a in aux]


@dataclass(frozen=True)
class LMTrainConfig:
    game: str = "othello"
    """Which game's generator and tokenizer to train on."""
    run_dir: str = "runs/lm-othello"
    """Run folder (training state, metrics log, exported model)."""
    n_layer: int = 6
    """Transformer blocks."""
    n_head: int = 6
    """Attention heads."""
    n_embd: int = 192
    """Residual width."""
    steps: int = 6000
    """Optimiser steps (the LR schedule's length)."""
    batch_games: int = 128
    """Games per step."""
    lr: float = 1e-3
    """Peak learning rate."""
    warmup_steps: int = 200
    """Linear warmup steps."""
    min_lr_ratio: float = 0.1
    """Decay floor as a fraction of lr."""
    schedule: str = "cosine"
    """'cosine' (warmup, then cosine decay over all steps) or 'wsd' (warmup, constant, then a
    linear decay over the last decay_frac of the steps): a wsd run can be extended or ended
    early on --resume by changing --steps, since only its final decay depends on them."""
    decay_frac: float = 0.2
    """wsd: fraction of the steps spent decaying."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices."""
    checkpoint_every: int = 250
    """Steps between training checkpoints."""
    eval_every: int = 500
    """Steps between legal-move evaluations."""
    eval_games: int = 500
    """Held-out games for legal-move accuracy."""
    probe_games: int = 200
    """At every evaluation, also fit linear probes on this many train + test games at every
    layer and log their board reconstruction (the world-model curve); 0 = off."""
    sae_layer: int = 4
    """Default block whose output the producer streams (stored in the model's config)."""
    seed: int = 0
    """Seed for weights and game generation."""
    threads: int = 0
    """torch intra-op threads (0 = torch's default)."""
    objective: str = "auto"
    """'next': cross-entropy on the move played; 'legal': against the uniform distribution over
    the legal moves it was drawn from (Othello; same optimum, less noise); 'auto': legal where
    the game supports it."""
    compile: bool = False
    """torch.compile the model (a few percent more tokens/s on this CPU; ~1 min to compile)."""
    snapshots: bool = True
    """Also keep the model at every evaluation in <out>/snapshots/step-N (for learning curves)."""
    init_from: str = ""
    """Start from this saved model's weights (a bundled-model folder of the same game and shape),
    its step and games seen; AdamW starts fresh and the LR re-warms. Give a --seed other than the
    model's so the games are new ones. Ignored when --resume finds a training state."""
    device: str = "cpu"
    """'cpu', 'cuda[:i]' or 'auto' (CUDA when present). Probes run on a CPU copy."""
    bf16: bool = False
    """Forward under bf16 autocast (weights and optimiser stay fp32)."""
    data_workers: int = 0
    """Processes generating the training games (0 = in the training process). With workers,
    batch i is made from seed (seed, i), so --resume continues exactly."""
    max_minutes: float = 0.0
    """Stop after this many wall-clock minutes (then evaluate, export and checkpoint; 0 = run to
    --steps). The schedules still span --steps: pick steps that fit the time."""
    board_heads: tuple[str, ...] = ()
    """Auxiliary board objectives, `LAYER[:weight=W,anneal=F]` each (boardlens.lm.board_heads):
    a linear head on that block's output predicts the board family at every position, its
    cross-entropy x W beside the LM loss, W falling to 0 over the last F of this run's steps
    (from 0, or from --init-from's step; default W 1.0, F 0.25). Never on sae_layer; dropped from the exported model, named in its config."""

    @property
    def heads(self) -> tuple[BoardHead, ...]:
        return tuple(BoardHead.parse(h) for h in self.board_heads)

    def __post_init__(self) -> None:
        game = GAMES[self.game]  # an unknown game fails here, naming the known ones
        if self.objective != "auto" and self.objective not in game.lm_objectives:
            raise ValueError(f"objective must be auto or one of {game.name}'s {game.lm_objectives}, "
                             f"got {self.objective!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu or cuda[:i], got {self.device!r}")
        if self.data_workers < 0 or self.max_minutes < 0:
            raise ValueError("data_workers and max_minutes must be >= 0")
        for k in ("steps", "batch_games", "checkpoint_every", "eval_every", "eval_games"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1")
        if self.probe_games < 0:
            raise ValueError(f"probe_games must be >= 0, got {self.probe_games}")
        if not 0 <= self.sae_layer < self.n_layer:
            raise ValueError(f"sae_layer must be in 0..{self.n_layer - 1}")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if self.schedule not in ("cosine", "wsd"):
            raise ValueError(f"schedule must be cosine or wsd, got {self.schedule!r}")
        if not 0 < self.decay_frac <= 1:
            raise ValueError(f"decay_frac must be in (0, 1], got {self.decay_frac}")
        for h in self.heads:
            if not 0 <= h.layer < self.n_layer or h.layer == self.sae_layer:
                raise ValueError(f"board head {h.spec}: its layer must be in 0..{self.n_layer - 1} and not the "
                                 f"SAE layer {self.sae_layer} (an SAE there could just find the head)")
        if self.heads and not game.lm_data().board_batches:
            raise ValueError(f"{game.name} has no board batches (LMData.board_batches): no board heads")


def lr_at(cfg: LMTrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(cfg.decay_frac * cfg.steps))
        frac = min(1.0, max(0.0, (step - (cfg.steps - decay_steps)) / decay_steps))
        return cfg.lr * (1 - (1 - cfg.min_lr_ratio) * frac)
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _optimizer(model: GPT, cfg: LMTrainConfig, heads: BoardHeads | None = None) -> torch.optim.AdamW:
    params = [*model.parameters(), *(heads.parameters() if heads is not None else ())]
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    # fused: one kernel for all parameters instead of a loop over them
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=True)


def _save_state(path: Path, model, opt, step, rng, best, seen, heads=None, start_step=0) -> None:
    state = {
        "model": model.state_dict(),
        "start_step": start_step,
        **({"board_heads": heads.state_dict()} if heads is not None else {}),
        "opt": opt.state_dict(),
        "step": step,
        "best_acc": best,
        "games_seen": seen,
        "torch_rng": torch.get_rng_state(),
        "np_rng": json.dumps(rng.bit_generator.state),
    }
    write_atomic(path, lambda p: torch.save(state, p))


def compact_state(src: str | Path, dst: str | Path) -> None:
    """A training state small enough to commit between sittings (a third of the size): weights
    in float16, no AdamW moments. `--resume` from it re-initialises AdamW and warms the LR up
    again over warmup_steps; step, games seen and RNG states carry over exactly."""
    st = load_torch(src, "training state")
    st["model"] = {k: v.half() if v.is_floating_point() else v for k, v in st["model"].items()}
    del st["opt"]
    write_atomic(dst, lambda p: torch.save(st, p))


class _Run:
    """One training run's moving parts: model, optimiser, data, counters, and its folder."""

    def __init__(self, cfg: LMTrainConfig) -> None:
        self.cfg, self.data = cfg, GAMES[cfg.game].lm_data()
        self.out = Path(cfg.run_dir)
        torch.manual_seed(cfg.seed)
        self.device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                                   else "cpu" if cfg.device == "auto" else cfg.device)
        self.model = GPT(GPTConfig(vocab_size=self.data.vocab_size, block_size=self.data.context,
                                   n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd)).to(self.device)
        self.pool = None  # BatchPool of data_workers, started at the first step (after any resume)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.objective = cfg.objective if cfg.objective != "auto" else (
            "legal" if "legal" in self.data.batches else "next")
        self.heads, self.head_weights, self.head_losses = None, [], []
        if cfg.heads:  # the board family's cells x classes, one head per spec
            fam = GAMES[cfg.game].families()[0]
            self.heads = BoardHeads(cfg.heads, cfg.n_embd, fam.shape[0] * fam.shape[1], fam.num_classes).to(self.device)
        self.batch = (self.data.board_batches if self.heads is not None else self.data.batches)[self.objective]
        self.opt = _optimizer(self.model, cfg, self.heads)
        self.rng = np.random.default_rng(cfg.seed)
        self.eval_set = self.data.eval_set(cfg.eval_games, 10_000_019 + cfg.seed)  # disjoint seed stream
        self.step, self.best, self.seen = 0, -1.0, 0
        self.start_step = 0  # where this run began (--init-from: the model's step): board heads anneal over the rest
        self.state_path = self.out / "train_state.pt"
        self.rewarm_from: int | None = None  # a compact state has no AdamW moments: re-warm the LR from here

    def restore(self) -> None:
        """Continue from train_state.pt (full, or compact: then a fresh AdamW and a re-warmed LR)."""
        st = load_torch(self.state_path, "training state")  # a pickle of more than tensors is refused
        try:
            self.model.load_state_dict(st["model"])  # copies into the fp32 parameters, whatever the dtype
            if self.heads is not None:
                if "board_heads" not in st:
                    raise KeyError("it has no board heads: resume it without --board-head")
                self.heads.load_state_dict(st["board_heads"])
            self.step, self.best, self.seen = st["step"], st["best_acc"], st["games_seen"]
            self.start_step = int(st.get("start_step", 0))
            if "opt" in st:
                self.opt.load_state_dict(st["opt"])
            else:
                self.rewarm_from = self.step
            torch.set_rng_state(st["torch_rng"])
            self.rng.bit_generator.state = json.loads(st["np_rng"])
        except (RuntimeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise CheckpointError(f"{self.state_path}: not a resumable training state of this model "
                                  f"({str(e).splitlines()[0][:200]})") from e
        print(f"resumed at step {self.step} (best acc {self.best:.4f})"
              + ("" if self.rewarm_from is None else f"; compact state: fresh AdamW, LR re-warmed over "
                 f"{self.cfg.warmup_steps} steps"), flush=True)

    def init_from(self, folder: str) -> None:
        """Start from a saved model (see LMTrainConfig.init_from)."""
        from boardlens.lm.checkpoint import load_model

        model, meta = load_model(folder)
        if meta.get("game") != self.cfg.game or model.config.to_dict() != self.model.config.to_dict():
            raise CheckpointError(f"{folder}: a {meta.get('game')} model {model.config.to_dict()} cannot start a "
                                  f"{self.cfg.game} run of {self.model.config.to_dict()}")
        self.model.load_state_dict(model.state_dict())
        self.step, self.seen = int(meta.get("train_steps", 0)), int(meta.get("games_seen", 0))
        self.rewarm_from = self.start_step = self.step
        print(f"starting from {folder} at step {self.step} ({self.seen:,} games seen); fresh AdamW, LR "
              f"re-warmed over {self.cfg.warmup_steps} steps", flush=True)

    def train_step(self) -> float:
        lr = lr_at(self.cfg, self.step)
        if self.rewarm_from is not None:
            lr *= min(1.0, (self.step - self.rewarm_from + 1) / self.cfg.warmup_steps)
        for g in self.opt.param_groups:
            g["lr"] = lr
        if self.cfg.data_workers and self.pool is None:
            from boardlens.lm.batches import BatchPool

            self.pool = BatchPool(self.batch, self.cfg.batch_games, self.cfg.seed, self.cfg.data_workers, self.step)
        batch = self.pool.next() if self.pool is not None else self.batch(self.rng, self.cfg.batch_games)
        x, y, *board = (t.to(self.device, non_blocking=True) for t in batch)  # board: with heads only
        if self.heads is not None:
            self.head_weights = self.heads.weights_at(self.step - self.start_step, self.cfg.steps - self.start_step)
        loss, self.head_losses = train_step(self.model, self.forward, self.opt, x, y, bf16=self.cfg.bf16,
                                            board=board[0] if board else None, heads=self.heads,
                                            head_weights=self.head_weights)
        self.step += 1
        self.seen += self.cfg.batch_games
        return loss.item()

    def evaluate(self, rec: dict, say) -> None:
        """Held-out legality (and the probe curve) into rec, reported through say(text); keep
        the model (best, snapshots)."""
        cfg, data, step = self.cfg, self.data, self.step
        self.model.eval()
        acc = data.score(self.model, self.eval_set)
        self.model.train()
        rec[data.score_name] = acc
        say(f"step {step}: held-out {data.score_name} {acc:.4f}")
        if cfg.probe_games:
            rec["probe_reconstruction"] = _probe_curve(self.model if self.device.type == "cpu"
                                                       else copy.deepcopy(self.model).cpu(), cfg)
            say(f"step {step}: probe reconstruction by layer {rec['probe_reconstruction']}")
        meta = {"game": cfg.game, "sae_layer": cfg.sae_layer, data.score_name: acc, "train_steps": step,
                "games_seen": self.seen, "tokens_seen": self.seen * data.context, "objective": self.objective,
                **({"board_heads": self.heads.card()} if self.heads is not None else {})}
        if cfg.snapshots:
            save_model(self.model, self.out / "snapshots" / f"step-{step:07d}", meta)
        if acc > self.best or self.heads is not None:  # with board heads: the newest (the anneal's end)
            self.best = max(acc, self.best)
            save_model(self.model, self.out / "model", meta)

    def save(self) -> None:
        _save_state(self.state_path, self.model, self.opt, self.step, self.rng, self.best, self.seen, self.heads,
                    self.start_step)


def train(cfg: LMTrainConfig, resume: bool = False) -> dict:
    """Train until cfg.steps or SIGTERM/Ctrl-C (then checkpoint and return)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(cfg.run_dir) / "train_config.json", asdict(cfg))
    print(f"lm-train config {json.dumps(asdict(cfg), sort_keys=True)}", flush=True)
    run = _Run(cfg)
    if resume and run.state_path.exists():
        run.restore()
    elif cfg.init_from:
        run.init_from(cfg.init_from)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    log = open(run.out / "lm_metrics.jsonl", "a")
    clock = _Clock(run.seen * run.data.context)
    bar = Progress(cfg.steps, "step", initial=run.step)
    try:
        while run.step < cfg.steps and not stop.is_set():
            loss = run.train_step()
            bar.show(run.step, f"loss {loss:.4f} {clock.rate(run.seen * run.data.context):,.0f} tok/s")
            rec = {"step": run.step, "loss": round(loss, 5), "games": run.seen}
            if run.heads is not None:
                rec["board_heads"] = [{"layer": h.layer, "weight": round(w, 5), "loss": round(a, 5)} for h, w, a
                                      in zip(run.heads.specs, run.head_weights, run.head_losses, strict=True)]
            out_of_time = cfg.max_minutes and clock.wall() > 60 * cfg.max_minutes
            if run.step % cfg.eval_every == 0 or run.step == cfg.steps or out_of_time:
                rec.update(clock.cost())
                run.evaluate(rec, bar.write)
            log.write(json.dumps(rec) + "\n")
            if run.step % cfg.checkpoint_every == 0:
                log.flush()
                run.save()
            if out_of_time:
                bar.write(f"stopping at step {run.step}: --max-minutes {cfg.max_minutes:g} reached")
                break
    finally:
        bar.close()
        run.save()
        log.close()
        if run.pool is not None:
            run.pool.close()
        for s, h in old.items():
            signal.signal(s, h)
    print(f"stopped at step {run.step}; best legal-move accuracy {run.best:.4f}", flush=True)
    return {"step": run.step, "best_acc": run.best, "games_seen": run.seen}


class _Clock:
    """This sitting's wall and CPU time (CPU: every thread of this process)."""

    def __init__(self, tokens0: int) -> None:
        self.t0, self.cpu0, self.tokens0 = time.time(), time.process_time(), tokens0

    def wall(self) -> float:
        return time.time() - self.t0

    def rate(self, tokens: int) -> float:
        return (tokens - self.tokens0) / max(self.wall(), 1e-9)

    def cost(self) -> dict:
        """For learning curves per CPU-minute."""
        return {"wall_s": round(self.wall(), 1), "cpu_s": round(time.process_time() - self.cpu0, 1)}


def _probe_curve(model: GPT, cfg: LMTrainConfig) -> dict[str, float]:
    """{layer: board reconstruction F1 of per-BSP linear probes} for the game's main family."""
    from boardlens.lm.probe import layer_reports

    model.eval()
    try:
        reps = layer_reports(model, cfg.game, range(cfg.n_layer), cfg.probe_games, cfg.probe_games,
                             seed=20_000_003 + cfg.seed, mlp=False)
    finally:
        model.train()
    fam = next(iter(reps[0].probe))
    return {str(r.layer): round(r.probe[fam].reconstruction, 4) for r in reps}

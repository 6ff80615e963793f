"""A nanoGPT-compatible GPT (no biases, GELU, LayerNorm, learned positions).

Parameter names match nanoGPT's (`transformer.h.{i}.attn.c_attn.weight`, ...), so ChessGPT's
checkpoints load into it by name. The forward can return the residual stream after any
blocks in the same pass, stop early once the deepest requested block is done (the producer
never needs logits), and replace one block's output (for loss recovered).

    python -c "from boardlens.lm.model import GPT, GPTConfig; print(GPT(GPTConfig()).num_params())"
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

_BOUNDS = {"vocab_size": 1 << 20, "block_size": 1 << 16, "n_layer": 512, "n_head": 1024, "n_embd": 1 << 16,
           "d_mlp": 1 << 18}
_MAX_PARAMS = 20e9  # 80 GB of float32
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}
NORMS = ("layernorm", "rmsnorm", "none")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 61
    """Number of token ids."""
    block_size: int = 59
    """Context length in tokens (learned position embeddings)."""
    n_layer: int = 8
    """Transformer blocks."""
    n_head: int = 8
    """Attention heads per block."""
    n_embd: int = 512
    """Residual stream width d_model."""
    d_mlp: int = 0
    """MLP hidden width; 0 means 4 * n_embd (nanoGPT)."""
    bias: bool = False
    """Linear and LayerNorm biases (ChessGPT and OthelloGPT: none; HF GPT-2 exports: zeros)."""
    activation: str = "gelu"
    """MLP activation: 'gelu' (exact, nanoGPT), 'gelu_tanh' (HF GPT-2's 'gelu_new'), 'relu' or
    'silu'."""
    head_bias: bool = False
    """A bias on the unembedding (TransformerLens models have b_U)."""
    norm: str = "layernorm"
    """Normalisation before attention, MLP and unembedding: 'layernorm', 'rmsnorm' (weight, no
    centring or bias) or 'none' (TransformerLens normalization_type None)."""
    ln_eps: float = 1e-5
    """Epsilon of the normalisations (HF layer_norm_epsilon, TransformerLens eps)."""
    attn_scale: float = 0.0
    """Attention logits are divided by this; 0 = sqrt(d_head) (HF scale_attn_weights=False and
    TransformerLens use_attn_scale=False are 1.0)."""
    attn_scale_by_layer: bool = False
    """Also divide block i's attention logits by i + 1 (HF scale_attn_by_inverse_layer_idx)."""

    def __post_init__(self) -> None:
        # Bounded before anything is allocated: a typo in a config (n_layer 10**6) must be an
        # error, not minutes of allocation until the memory limit.
        for name, high in _BOUNDS.items():
            value = getattr(self, name)
            if type(value) is not int or not (name == "d_mlp" or value >= 1) or not 0 <= value <= high:
                raise ValueError(f"GPTConfig.{name} must be an int in {0 if name == 'd_mlp' else 1}..{high}, "
                                 f"got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_params() > _MAX_PARAMS:
            raise ValueError(f"GPTConfig would hold {self.n_params():.3g} parameters (limit {_MAX_PARAMS:.0e})")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        for name in ("ln_eps", "attn_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e6:
                raise ValueError(f"GPTConfig.{name} must be a number in [0, 1e6), got {value!r}")
        if self.norm != "none" and self.ln_eps <= 0:
            raise ValueError(f"ln_eps must be > 0, got {self.ln_eps!r}")

    @property
    def mlp_width(self) -> int:
        return self.d_mlp or 4 * self.n_embd

    def to_dict(self) -> dict:
        return asdict(self)

    def n_params(self) -> int:
        """Parameters of a model of this config (embeddings, blocks, final norm, unembedding)."""
        d, mlp = self.n_embd, self.mlp_width
        block = 4 * d * d + 2 * d * mlp + (2 + 2) * d
        return self.vocab_size * d * 2 + self.block_size * d + self.n_layer * block + d


class LayerNorm(nn.Module):
    """The block's normalisation: LayerNorm with an optional bias (torch's own cannot drop only
    the bias before 2.1), RMSNorm (a weight, no bias), or none (no parameters)."""

    def __init__(self, n: int, bias: bool, kind: str = "layernorm", eps: float = 1e-5) -> None:
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(n)) if kind != "none" else None
        self.bias = nn.Parameter(torch.zeros(n)) if bias and kind == "layernorm" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layernorm":
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        if self.kind == "rmsnorm":
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return x


def _norm(cfg: GPTConfig) -> LayerNorm:
    return LayerNorm(cfg.n_embd, cfg.bias, cfg.norm, cfg.ln_eps)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        divisor = cfg.attn_scale or math.sqrt(cfg.n_embd // cfg.n_head)
        if cfg.attn_scale_by_layer:
            divisor *= layer + 1
        self.scale = 1.0 / divisor  # multiplies q.k
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.mlp_width, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.mlp_width, cfg.n_embd, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln_1 = _norm(cfg)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = _norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


ResidPatch = Callable[[torch.Tensor], torch.Tensor]


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                h=nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
                ln_f=_norm(cfg),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=cfg.head_bias)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        resid_layers: tuple[int, ...] = (),
        stop_after: int | None = None,
        patch: dict[int, ResidPatch] | None = None,
    ) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        """idx (B, T) int64 -> (logits (B, T, V) or None, {layer: resid after block (B, T, C)}).

        `stop_after=L` skips everything after block L (logits are then None). `patch[L]` maps
        block L's output to what the rest of the network sees (its return value is also what
        `resid_layers` reports for L).
        """
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        wanted = set(resid_layers)
        resid: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.transformer.h):
            x = block(x)
            if patch and i in patch:
                x = patch[i](x)
            if i in wanted:
                resid[i] = x
            if stop_after is not None and i >= stop_after:
                return None, resid
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        return logits, resid

    def forward_from(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) from block `layer`'s output x (B, T, C): the rest of the network
        only (what `forward(idx, patch={layer: f})` computes after f, without blocks 0..layer)."""
        if not 0 <= layer < self.config.n_layer:
            raise ValueError(f"layer must be in 0..{self.config.n_layer - 1}, got {layer}")
        for block in self.transformer.h[layer + 1 :]:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))

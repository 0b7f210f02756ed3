"""GPT-style decoder-only transformer: GPT-2 and Llama shapes from one config.

Reads top to bottom: config -> block -> model -> size/FLOPs helpers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.models.common.attention import SelfAttention, causal_mask
from lmforge.models.common.cache import AttentionCache, KVCache
from lmforge.models.common.config import ModelConfig
from lmforge.models.common.loss import linear_cross_entropy_sum
from lmforge.models.common.mlp import MLP
from lmforge.models.common.norms import make_norm
from lmforge.models.common.positions import rope_cos_sin, sinusoidal_table
from lmforge.models.registry import FamilyTraits

POSITIONS = ("learned", "sinusoidal", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_exact", "swiglu")


@dataclass
class GPTConfig(ModelConfig):
    family, display_name = "gpt", "GPT"

    vocab_size: int = 50257
    block_size: int = 1024          # longest context the model is built for
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None    # None = n_head (MHA); fewer = GQA; 1 = MQA
    n_embd: int = 768
    intermediate_size: int | None = None  # None = 4 * n_embd
    position: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    attention_dropout: float | None = None  # on the attention probabilities; None = dropout
    init_std: float = 0.02
    # Per-layer MLP widths left by structured pruning (`lmforge prune`); None = intermediate_size everywhere.
    layer_intermediate: list[int] | None = None

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.n_embd
        self.require_positive("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd",
                              "intermediate_size")
        self.require_heads_divide_width()
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"model.n_head ({self.n_head}) is not divisible by model.n_kv_head ({self.n_kv_head})",
                              "choose n_kv_head dividing n_head (1 = MQA, n_head = MHA)")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            raise ConfigError("rotary positions need an even head size", "change model.n_embd or model.n_head")
        self.require_choice("position", POSITIONS)
        self.require_choice("norm", NORMS)
        self.require_choice("mlp", MLPS)
        self.require_dropout("dropout", "attention_dropout")
        self.require_layer_sizes("layer_intermediate")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.ln_1 = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias)
        self.attn = SelfAttention(cfg.n_embd, cfg.n_head, cfg.n_kv_head, bias=cfg.bias, dropout=cfg.dropout,
                                  attention_dropout=cfg.attention_dropout, causal=True)
        self.ln_2 = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias)
        self.mlp = MLP(cfg.n_embd, cfg.layer_size("layer_intermediate", layer, cfg.intermediate_size), kind=cfg.mlp,
                       bias=cfg.bias, dropout=cfg.dropout)

    def forward(self, x, *, rope=None, mask=None, kv_cache=None, layer_idx=0):
        x = x + self.attn(self.ln_1(x), rope=rope, mask=mask, kv_cache=kv_cache, layer_idx=layer_idx)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    family = "gpt"
    sums_loss_from_labels = True  # forward(input_ids, labels=...) returns the summed loss

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.position == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        elif cfg.position == "sinusoidal":
            self.register_buffer("wpe_table", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                scale = (2 * self.config.n_layer) ** -0.5 if name.endswith(("proj.weight", "down.weight")) else 1.0
                nn.init.normal_(p, mean=0.0, std=std * scale)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)

    def forward(self, input_ids: torch.Tensor, *, kv_cache: AttentionCache | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                last_only: bool = False, labels: torch.Tensor | None = None,
                return_hidden: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab) for `input_ids` (B, T).

        With `kv_cache`, the tokens continue the cached ones (the caller advances the cache).
        `attention_mask` (B, S) marks real tokens over cache + new tokens (left padding).
        `last_only` computes logits for the final position only, which is all decoding needs.
        With `labels` (B, T), the target of each position (-100 = none), returns instead the fp32 sum of
        the cross-entropy over the targets, without ever holding the (B, T, vocab) logits.
        `return_hidden` returns the final hidden states (B, T, C) instead of logits.
        """
        B, T = input_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        S = past + T
        if S > self.config.block_size:
            raise ValueError(f"sequence of {S} tokens exceeds the model's context length {self.config.block_size}")
        if position_ids is None:
            if attention_mask is not None:
                # Left padding: real tokens are numbered from 0 regardless of the pads before them.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:S]
            else:
                position_ids = torch.arange(past, S, device=input_ids.device)[None].expand(B, T)
        x = self.wte(input_ids)  # (B, T, C)
        rope = None
        if self.config.position == "learned":
            x = x + self.wpe(position_ids)
        elif self.config.position == "sinusoidal":
            x = x + self.wpe_table[position_ids].to(x.dtype)
        else:
            rope = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        x = self.drop(x)
        # A cache that lays keys out its own way (per-request slots) supplies the matching mask (B, 1, T, S).
        mask = kv_cache.key_mask if kv_cache is not None else None
        if mask is None and attention_mask is not None:
            mask = causal_mask(T, S, input_ids.device, attention_mask)
        for i, block in enumerate(self.blocks):
            x = block(x, rope=rope, mask=mask, kv_cache=kv_cache, layer_idx=i)
        x = self.ln_f(x)
        if return_hidden:
            return x
        if labels is not None:
            return linear_cross_entropy_sum(x.reshape(B * T, -1), self.lm_head.weight, labels.reshape(B * T))
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) for task heads. Rows are right-padded: causal attention keeps
        every real token blind to the pads after it, so `attention_mask` is not needed."""
        return self(input_ids, return_hidden=True)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, *, dtype=None, device=None) -> KVCache:
        cfg = self.config
        ref = self.wte.weight
        return KVCache(cfg.n_layer, batch_size, cfg.n_kv_head, max_len or cfg.block_size, cfg.head_dim,
                       dtype=dtype or ref.dtype, device=device or ref.device)

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Mean next-token cross-entropy over targets that are not `ignore_index`."""
        logits = self(input_ids)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=ignore_index)


def count_parameters(model: nn.Module, *, exclude_embeddings: bool = False) -> int:
    """Unique parameters (tied weights counted once); works on the meta device."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if exclude_embeddings and name.split(".")[0] in ("wte", "wpe"):
            continue
        total += p.numel()
    return total


def flops_per_token(cfg: GPTConfig, seq_len: int | None = None, *, training: bool = True) -> float:
    """Matmul FLOPs per token: 2N forward (N = non-embedding params + lm head) plus attention scores.

    Training counts forward + backward (x3), as in the PaLM appendix B estimate used for MFU.
    """
    T = seq_len or cfg.block_size
    C, L, V, I = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.intermediate_size
    kv = cfg.n_kv_head * cfg.head_dim
    attn = C * (C + 2 * kv) + C * C
    mlp = C * I * (3 if cfg.mlp == "swiglu" else 2)
    matmul_params = L * (attn + mlp) + C * V
    # QK^T and AV each cost 2*T*C per token per layer (full context, as PaLM counts it).
    forward = 2 * matmul_params + 4 * L * T * C
    return float(3 * forward if training else forward)


# ---------------------------------------------------------------- presets
FAMILY, CONFIG, MODEL = "gpt", GPTConfig, GPT
TRAITS = FamilyTraits(structure="decoder", pooling="last", default_tokenizer="bpe", kv_cache=True)

_LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False)

PRESETS: dict[str, dict] = {
    "debug": dict(vocab_size=512, block_size=128, n_layer=2, n_head=4, n_embd=64),
    "gpt-mini": dict(vocab_size=4096, block_size=256, n_layer=4, n_head=4, n_embd=256),
    # CPU-sized character model, the transformer of `lmforge compare` (vocab_size comes from the tokenizer).
    # Character-level (tinyshakespeare-sized) model: rotary positions and exact GELU learn fastest per CPU second.
    "gpt-char-small": dict(vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128, position="rope",
                           mlp="gelu_exact"),
    # nanoGPT's shakespeare-char size (10.7M parameters, context 256): for GPU budgets.
    "gpt-char-medium": dict(vocab_size=256, block_size=256, n_layer=6, n_head=6, n_embd=384, position="rope",
                            mlp="gelu_exact"),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-355m": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-774m": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-1.5b": dict(n_layer=48, n_head=25, n_embd=1600),
    "llama-debug": dict(vocab_size=512, block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                        intermediate_size=172, norm_eps=1e-5, **_LLAMA),
    # Llama 3.2 1B shapes (GQA 32/8, tied embeddings, rope theta 500k).
    "llama-1b": dict(vocab_size=128256, block_size=8192, n_layer=16, n_head=32, n_kv_head=8, n_embd=2048,
                     intermediate_size=8192, rope_theta=500000.0, norm_eps=1e-5, **{**_LLAMA, "tie_embeddings": True}),
    # Llama 2 7B shapes: 6.74B parameters.
    "llama-7b": dict(vocab_size=32000, block_size=4096, n_layer=32, n_head=32, n_embd=4096,
                     intermediate_size=11008, norm_eps=1e-5, **_LLAMA),
}

"""Attention: self-attention (grouped KV heads, rotary positions, a KV cache) and cross-attention.

Each layer calls an attention function with SDPA's arguments. The default, `attend`, runs PyTorch's
fused kernels (or, on CPU at bf16, materialised scores where those are faster); `naive_attend` is
the textbook computation the fast paths are tested against. `use_naive_attention(model)` switches a
whole model to the reference for the duration of a `with` block.
Shapes: B batch, T new tokens (queries), S attended tokens (keys), nh heads, hs head size.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.models.common.cache import AttentionCache
from lmforge.models.common.positions import rope_heads_last

# (q, k, v, *, mask, is_causal, dropout, scale) -> attention output (B, nh, T, hs), as `attend`.
AttentionFn = Callable[..., torch.Tensor]


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None = None, is_causal: bool = False,
                    scale: float | None = None) -> torch.Tensor:
    """Textbook softmax(QK^T * scale) V, scale = 1/sqrt(d) unless given; the reference SDPA is tested against.

    q: (B, nh, T, hs), k/v: (B, nh, S, hs), mask broadcastable to (B, nh, T, S): bool (True = attend)
    or float (added to the scores, as SDPA does).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, nh, T, S)
    if is_causal:
        T, S = q.shape[-2], k.shape[-2]
        causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def causal_mask(T: int, S: int, device, padding: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask (B or 1, 1, T, S): new token i (at position S-T+i) sees keys j <= S-T+i.

    `padding` (B, S) marks real tokens True; padded keys are never attended.
    """
    mask = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)[None, None]
    if padding is not None:
        mask = mask & padding[:, None, None, :].bool()
        # A padded query row would otherwise softmax over nothing (NaN); let every
        # query see its own position, which only affects outputs nobody reads.
        own = torch.zeros(T, S, dtype=torch.bool, device=device)
        own[torch.arange(T, device=device), torch.arange(S - T, S, device=device)] = True
        mask = mask | own[None, None]
    return mask


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None, is_causal: bool,
           dropout: float, scale: float | None) -> torch.Tensor:
    """SDPA, or materialised scores on CPU at bf16 where those are faster; (B, nh, T, hs) in and out."""
    mask = _mask_in_dtype_of(mask, q)
    if _materialize_on_cpu(q, k):
        return materialized_attention(q, k, v, mask=mask, is_causal=is_causal, dropout=dropout, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                          scale=scale)


def naive_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None, is_causal: bool,
                 dropout: float, scale: float | None) -> torch.Tensor:
    """`naive_attention` behind `attend`'s arguments. It drops nothing: the reference serves eval-mode
    comparisons, where dropout is off anyway."""
    return naive_attention(q, k, v, mask=_mask_in_dtype_of(mask, q), is_causal=is_causal, scale=scale)


def _mask_in_dtype_of(mask: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor | None:
    # Under autocast q is bf16, and SDPA wants an additive mask of the same dtype.
    return mask.to(q.dtype) if mask is not None and mask.is_floating_point() else mask


# Largest score matrix (elements, over batch and heads) worth materialising; beyond it the
# quadratic memory outweighs the speed and the flash kernel is used.
MATERIALIZE_MAX_SCORES = 1 << 25


def _materialize_on_cpu(q: torch.Tensor, k: torch.Tensor) -> bool:
    """On CPU, PyTorch's bf16 flash-attention kernel (its backward above all) is 2-5x slower than
    plain bf16 batched matmuls plus a softmax while the T x S scores fit comfortably in memory.
    That holds for one-token decode steps of a batch too (3.5x at 8 rows); for a single row the
    two are within 15% either way, and the fused kernel is kept."""
    B, nh, T, _ = q.shape
    return (q.device.type == "cpu" and q.dtype == torch.bfloat16 and (T > 1 or B > 1)
            and B * nh * T * k.shape[-2] <= MATERIALIZE_MAX_SCORES)


def materialized_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None,
                           is_causal: bool, dropout: float, scale: float | None) -> torch.Tensor:
    """softmax(QK^T * scale + bias) V with the scores held in q's dtype; same arguments as SDPA."""
    B, nh, T, hs = q.shape
    S = k.shape[-2]
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    if mask is None:
        bias = _causal_bias(T, S, q.dtype, q.device) if is_causal else None
    elif mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
        if is_causal:
            bias = bias + _causal_bias(T, S, q.dtype, q.device)
    else:
        bias = mask + _causal_bias(T, S, q.dtype, q.device) if is_causal else mask
    qf, kt = q.reshape(B * nh, T, hs), k.reshape(B * nh, S, hs).transpose(1, 2)
    if bias is None:
        scores = torch.bmm(qf, kt).mul_(scale)
    else:
        # baddbmm adds the bias in the matmul's epilogue; a per-batch or per-head bias is expanded first.
        if bias.dim() > 2 and any(n > 1 for n in bias.shape[:-2]):
            bias = bias.expand(B, nh, T, S).reshape(B * nh, T, S)
        else:
            bias = bias.reshape(T if bias.shape[-2] == T else 1, S)
        scores = torch.baddbmm(bias, qf, kt, alpha=scale)
    probs = torch.softmax(scores, dim=-1)
    if dropout > 0.0:
        probs = F.dropout(probs, p=dropout)
    return torch.bmm(probs, v.reshape(B * nh, S, hs)).view(B, nh, T, hs)


def _causal_bias(T: int, S: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(T, S) additive mask: 0 where query i (at position S-T+i) may see key j, -inf elsewhere."""
    keep = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)
    return torch.zeros(T, S, dtype=dtype, device=device).masked_fill_(~keep, float("-inf"))


class SelfAttention(nn.Module):
    """Multi-head self-attention with grouped KV heads (MHA when n_kv_head == n_head, MQA when 1).

    `head_dim` defaults to n_embd // n_head; `scale` multiplies the scores (default 1/sqrt(head_dim)).
    `mask` may be bool (True = attend) or an additive float bias such as T5's relative positions.
    `dropout` applies to the output projection and, unless `attention_dropout` is given, to the
    attention probabilities too; dropping probabilities forces SDPA off its fused CPU kernels.
    `attention_fn` computes the attention itself (see `attend`, `naive_attend`).
    """

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int, *, bias: bool, dropout: float,
                 attention_dropout: float | None = None, causal: bool = True, rope_theta: float | None = None,
                 head_dim: int | None = None, scale: float | None = None, attention_fn: AttentionFn = attend):
        super().__init__()
        assert n_head % n_kv_head == 0 and (head_dim is not None or n_embd % n_head == 0)
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_dim = head_dim or n_embd // n_head
        self.causal = causal
        self.rope_theta = rope_theta
        self.dropout = dropout if attention_dropout is None else attention_dropout
        self.scale = scale
        self.attention_fn = attention_fn
        self.qkv = nn.Linear(n_embd, (n_head + 2 * n_kv_head) * self.head_dim, bias=bias)
        self.proj = nn.Linear(n_head * self.head_dim, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, *, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None, kv_cache: AttentionCache | None = None,
                layer_idx: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        hs, nh, nkv = self.head_dim, self.n_head, self.n_kv_head
        qkv = self.qkv(x)
        if rope is not None:
            # q and k sit side by side in the projection: rotate them in one pass, in their own dtype.
            qk = rope_heads_last(qkv[..., :(nh + nkv) * hs].view(B, T, nh + nkv, hs), *rope)
            q, k = qk.split([nh, nkv], dim=2)
        else:
            q, k = qkv[..., :nh * hs].view(B, T, nh, hs), qkv[..., nh * hs:(nh + nkv) * hs].view(B, T, nkv, hs)
        q = q.transpose(1, 2)  # (B, nh, T, hs)
        k = k.transpose(1, 2)  # (B, nkv, T, hs)
        v = qkv[..., (nh + nkv) * hs:].view(B, T, nkv, hs).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(layer_idx, k, v)  # (B, nkv, S, hs)
        if nkv != nh:
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
        S = k.shape[2]
        # Without an explicit mask, only a square causal block (or a single decode
        # token that may see everything before it) can use the fast kernels.
        is_causal = self.causal and mask is None and T == S and T > 1
        if self.causal and mask is None and T != S and T > 1:
            mask = causal_mask(T, S, x.device)
        drop = self.dropout if self.training else 0.0
        y = self.attention_fn(q, k, v, mask=mask, is_causal=is_causal, dropout=drop, scale=self.scale)
        y = y.transpose(1, 2).reshape(B, T, nh * hs)
        return self.resid_dropout(self.proj(y))




class CrossAttention(nn.Module):
    """Attention from decoder positions (queries) to a fixed memory such as an encoder output (keys/values).

    The memory's keys/values depend only on the memory, so `project_memory` computes them once and
    every decoding step reuses them. `attention_fn` computes the attention itself, as in `SelfAttention`.
    """

    def __init__(self, n_embd: int, n_head: int, *, head_dim: int | None = None, bias: bool, dropout: float,
                 scale: float | None = None, attention_fn: AttentionFn = attend):
        super().__init__()
        self.n_head = n_head
        self.head_dim = head_dim or n_embd // n_head
        self.dropout = dropout
        self.scale = scale
        self.attention_fn = attention_fn
        inner = n_head * self.head_dim
        self.q = nn.Linear(n_embd, inner, bias=bias)
        self.kv = nn.Linear(n_embd, 2 * inner, bias=bias)
        self.proj = nn.Linear(inner, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B, S, C) -> keys, values (B, nh, S, hs)."""
        B, S, _ = memory.shape
        k, v = self.kv(memory).view(B, S, 2, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor], *,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) attends to `memory_kv` from `project_memory`; `mask` (B, 1, 1, S) hides padded memory."""
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k, v = memory_kv
        drop = self.dropout if self.training else 0.0
        y = self.attention_fn(q, k, v, mask=mask, is_causal=False, dropout=drop, scale=self.scale)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.proj(y))


@contextmanager
def use_naive_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Within the `with` block, every attention layer of `model` computes `naive_attend`, the
    reference the fast kernels are tested against; each layer's own function is restored on exit."""
    layers = [m for m in model.modules() if isinstance(m, (SelfAttention, CrossAttention))]
    own = [m.attention_fn for m in layers]
    for layer in layers:
        layer.attention_fn = naive_attend
    try:
        yield model
    finally:
        for layer, fn in zip(layers, own):
            layer.attention_fn = fn

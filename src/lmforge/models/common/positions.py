"""Position encodings: fixed sinusoids, rotary embeddings (RoPE) and T5's learned relative position bias."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """The fixed sin/cos table of Vaswani et al. (2017), shape (max_len, dim)."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: dim // 2])
    return table


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for rotary embeddings at integer `positions` (any shape) -> (..., head_dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # (..., hs/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # half-split layout, as in Llama / HF
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, nh, T, hs); cos/sin: (B, T, hs) or (T, hs)."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def rope_heads_last(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rope` for x laid out (B, T, heads, hs), computed in x's dtype (as Llama does under
    autocast); cos/sin: (B, T, hs) or (T, hs)."""
    cos, sin = cos.to(x.dtype).unsqueeze(-2), sin.to(x.dtype).unsqueeze(-2)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def relative_position_bucket(relative_position: torch.Tensor, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's bucket of each `key_position - query_position` (Raffel et al. 2020, as in Mesh TensorFlow).

    Half the buckets hold the distances 0, 1, 2, ... exactly; the other half cover larger distances on a
    log scale up to `max_distance`, beyond which all distances share the last bucket. Bidirectional
    attention spends half the buckets on keys after the query; causal attention maps those to bucket 0.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    # Clamped below at max_exact so the log is finite; those small distances take the exact branch anyway.
    log_ratio = torch.log(distance.clamp(min=max_exact).float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """A learned scalar per head and relative-position bucket, added to the attention scores (T5).

    One instance serves every layer of a stack: the encoder's is bidirectional, the decoder's causal.
    """

    def __init__(self, n_head: int, *, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.bidirectional, self.num_buckets, self.max_distance = bidirectional, num_buckets, max_distance
        self.table = nn.Embedding(num_buckets, n_head)

    def forward(self, T: int, S: int, *, past: int = 0) -> torch.Tensor:
        """Bias (1, nh, T, S) for queries at positions past..past+T-1 over keys at 0..S-1."""
        device = self.table.weight.device
        query = torch.arange(past, past + T, device=device)[:, None]
        key = torch.arange(S, device=device)[None, :]
        buckets = relative_position_bucket(key - query, bidirectional=self.bidirectional,
                                           num_buckets=self.num_buckets, max_distance=self.max_distance)
        return self.table(buckets).permute(2, 0, 1)[None]  # (T, S, nh) -> (1, nh, T, S)


"""Attention probabilities from a model's own attention layers, for the duration of a `with` block.

Every `SelfAttention` and `CrossAttention` computes its attention through its `attention_fn`
(the fused kernel by default). `record_attention(model)` swaps in a function that materialises
softmax(QK^T * scale + mask), keeps a copy of it, and multiplies it by V; on exit each layer gets
its own function back. Nothing outside the block changes: no global flag, and the fused path's
code is never touched, so training and serving keep their speed.

Shapes: B batch, nh heads, T queries, S keys, hs head size.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.models.common.attention import CrossAttention, SelfAttention


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, *, mask: torch.Tensor | None, is_causal: bool,
                            scale: float | None) -> torch.Tensor:
    """softmax(QK^T * scale + mask) as SDPA defines it: q (B, nh, T, hs), k (B, nh, S, hs) -> (B, nh, T, S).

    `mask` is bool (True = attend) or additive float, broadcastable to (B, nh, T, S); `is_causal` lets
    query i (at position S-T+i) see keys j <= S-T+i. The scores are computed in fp32 whatever q's dtype.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q.float(), k.float().transpose(-2, -1)) * scale  # (B, nh, T, S)
    T, S = scores.shape[-2:]
    if is_causal:
        keep = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        scores = scores.masked_fill(~keep, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    return torch.softmax(scores, dim=-1)


@dataclass
class AttentionRecord:
    """What one or more forward passes under `record_attention` attended to.

    `maps[kind][layer]` is the list of probability tensors (B, nh, T, S) that layer produced, one per
    call, in fp32; `kind` is "self" for a single stack, or "encoder.self", "decoder.self" and
    "decoder.cross" for an encoder-decoder.
    """
    maps: dict[str, dict[int, list[torch.Tensor]]] = field(default_factory=dict)

    def add(self, kind: str, layer: int, probs: torch.Tensor) -> None:
        self.maps.setdefault(kind, {}).setdefault(layer, []).append(probs)

    @property
    def kinds(self) -> list[str]:
        return list(self.maps)

    def layers(self, kind: str, call: int = -1) -> torch.Tensor:
        """Every layer's probabilities of one call (the last by default), stacked: (L, B, nh, T, S)."""
        by_layer = self.maps[kind]
        return torch.stack([by_layer[i][call] for i in sorted(by_layer)])

    def clear(self) -> None:
        self.maps.clear()


def attention_layers(model: nn.Module) -> list[tuple[str, int, nn.Module]]:
    """(kind, layer index, module) of every attention layer of `model`, in module order:
    "backbone.decoder.blocks.3.cross_attn" is kind "decoder.cross", layer 3."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (SelfAttention, CrossAttention)):
            parts = name.split(".")
            at = parts.index("blocks") if "blocks" in parts else None
            stack = parts[at - 1] if at and parts[at - 1] != "backbone" else ""
            role = "cross" if isinstance(module, CrossAttention) else "self"
            layer = int(parts[at + 1]) if at is not None else len(found)
            found.append((f"{stack}.{role}" if stack else role, layer, module))
    return found


def _recording(kind: str, layer: int, record: AttentionRecord, keep_grad: bool):
    def attend_and_record(q, k, v, *, mask, is_causal, dropout, scale):
        probs = attention_probabilities(q, k, mask=mask, is_causal=is_causal, scale=scale)
        record.add(kind, layer, probs if keep_grad else probs.detach())
        if dropout > 0.0:
            probs = F.dropout(probs, p=dropout)
        return torch.matmul(probs.to(v.dtype), v)  # (B, nh, T, hs)
    return attend_and_record


@contextmanager
def record_attention(model: nn.Module, *, keep_grad: bool = False) -> Iterator[AttentionRecord]:
    """Within the `with` block, every attention layer of `model` computes its probabilities explicitly and
    adds them to the yielded `AttentionRecord`; on exit each layer's own attention function is restored.

    `keep_grad` keeps the recorded tensors in the autograd graph (for gradient-weighted attention)."""
    record = AttentionRecord()
    layers = attention_layers(model)
    own = [module.attention_fn for _, _, module in layers]
    for kind, index, module in layers:
        module.attention_fn = _recording(kind, index, record, keep_grad)
    try:
        yield record
    finally:
        for (_, _, module), fn in zip(layers, own):
            module.attention_fn = fn

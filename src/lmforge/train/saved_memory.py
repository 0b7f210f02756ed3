"""Bytes that autograd saves for the backward pass of a GPT-family decoder, tensor by tensor.

Derived from what lmforge's blocks actually save (checked against `saved_tensors_hooks` in the tests),
per token and per layer:

    norm (x2)     its fp32 input (a LayerNorm under autocast and RMSNorm's `.float()` both work in fp32),
                  RMSNorm: the fp32 normalised tensor and 1/rms; LayerNorm: mean and 1/std;
                  its output as the next linear layer's input, in the compute dtype
    attention     q and k after rotary positions (a new tensor), v: a view that keeps the whole qkv
                  projection alive; with grouped KV heads, the repeated k and v instead of the projection;
                  the fused kernel's output and its fp32 log-sum-exp per head (never the T x T scores)
    MLP           GELU: the up projection and the activation; SwiGLU: gate, silu(gate), up and their product
    dropout       a one-byte mask after the attention and MLP output projections when dropout > 0

Activation checkpointing keeps, per layer, only the block's input ("full"), or the input plus the
outputs of the matmuls and the attention kernel ("selective": norms and activation functions are
recomputed), and rebuilds the rest of one layer's set while that layer runs backward.
"""
from __future__ import annotations

from dataclasses import dataclass

FP32 = 4
DROPOUT_MASK_BYTES = 1  # a bool per element (CUDA's fused dropout)
CHECKPOINTING = ("none", "full", "selective")


@dataclass(frozen=True)
class DecoderShape:
    """The shape fields of a decoder config that decide its memory (a GPT/Llama `GPTConfig`)."""

    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int
    intermediate_size: int
    vocab_size: int
    block_size: int
    norm: str
    mlp: str
    position: str
    dropout: float

    @classmethod
    def of(cls, cfg) -> "DecoderShape":
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def gated(self) -> bool:
        return self.mlp in ("swiglu", "geglu")


def _norm_bytes(s: DecoderShape, compute: int) -> int:
    """A norm's saved bytes per token: fp32 input, its statistics, and the output the linear layer saves."""
    stats = FP32 * s.n_embd + FP32 if s.norm == "rmsnorm" else 2 * FP32
    return FP32 * s.n_embd + stats + compute * s.n_embd


def _attention_bytes(s: DecoderShape, compute: int) -> int:
    hs, nh, nkv = s.head_dim, s.n_head, s.n_kv_head
    qkv = (nh + 2 * nkv) * hs
    repeated_kv = 2 * nh * hs if nkv != nh else 0
    if s.position == "rope":
        held = (nh + nkv) * hs + (repeated_kv or qkv)   # rotated q|k; repeated k, v or the projection under v
        held_bytes = compute * held + (2 * hs * compute if compute != FP32 else 0)  # cos/sin cast per layer
    else:
        held_bytes = compute * (qkv + repeated_kv)       # q is a view of the projection
    return held_bytes + compute * nh * hs + FP32 * nh     # kernel output (the projection's input), log-sum-exp


def _mlp_bytes(s: DecoderShape, compute: int) -> int:
    return compute * s.intermediate_size * (4 if s.gated else 2)


def layer_bytes_per_token(s: DecoderShape, compute: int) -> int:
    """Bytes one block saves per token without checkpointing (`compute`: 4 for fp32, 2 under bf16)."""
    masks = 2 * s.n_embd * DROPOUT_MASK_BYTES if s.dropout > 0 else 0
    return 2 * _norm_bytes(s, compute) + _attention_bytes(s, compute) + _mlp_bytes(s, compute) + masks


def selective_layer_bytes_per_token(s: DecoderShape, compute: int, residual: int) -> int:
    """Bytes a block keeps per token under selective checkpointing: its input and every matmul /
    attention-kernel output (qkv, attention, output projection, up|gate, down)."""
    qkv = (s.n_head + 2 * s.n_kv_head) * s.head_dim
    matmuls = qkv + s.n_embd + s.intermediate_size * (2 if s.gated else 1) + s.n_embd
    return residual * s.n_embd + compute * (matmuls + s.n_embd) + FP32 * s.n_head


def final_bytes_per_token(s: DecoderShape, compute: int) -> int:
    """Outside the blocks: the final norm's fp32 input and statistics, the token ids, and rotary cos/sin."""
    stats = FP32 * s.n_embd + FP32 if s.norm == "rmsnorm" else 2 * FP32
    rope = 2 * s.head_dim * FP32 if s.position == "rope" else 0
    return FP32 * s.n_embd + stats + 8 + rope


def kept_layer_bytes_per_token(s: DecoderShape, compute: int, residual: int, checkpointing: str) -> int:
    """Bytes a block keeps per token from its forward pass until its backward."""
    if checkpointing == "full":
        return residual * s.n_embd
    if checkpointing == "selective":
        return selective_layer_bytes_per_token(s, compute, residual)
    return layer_bytes_per_token(s, compute)


def activation_bytes(s: DecoderShape, tokens: int, seq_len: int, *, compute: int, residual: int,
                     checkpointing: str) -> int:
    """Bytes saved for backward over `tokens` tokens (micro-batch x sequence) at the end of the forward pass."""
    per_token = s.n_layer * kept_layer_bytes_per_token(s, compute, residual, checkpointing)
    positions = 8 * seq_len if s.position == "learned" else 0  # one (T,) row of int64 ids, broadcast
    return tokens * (per_token + final_bytes_per_token(s, compute)) + positions


def recompute_bytes(s: DecoderShape, tokens: int, *, compute: int, residual: int, checkpointing: str) -> int:
    """What rebuilding one checkpointed block for its backward adds to what it kept (0 without checkpointing)."""
    kept = kept_layer_bytes_per_token(s, compute, residual, checkpointing)
    return tokens * (layer_bytes_per_token(s, compute) - kept)


def backward_working_bytes(s: DecoderShape, tokens: int, compute: int) -> int:
    """Gradients of one layer's activations alive at once while it runs backward: the fp32 residual-stream
    gradient and its branch copy, and two MLP-width gradients."""
    return tokens * (2 * FP32 * s.n_embd + 2 * compute * s.intermediate_size)

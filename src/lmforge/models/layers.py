"""Building blocks shared by every model family.

Norms, position encodings (learned, sinusoidal, rotary), attention (SDPA plus a
naive reference kept for tests), feed-forward blocks and a preallocated KV cache.
Shapes in comments: B batch, T new tokens, S attended tokens, nh heads, hs head size.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 so bf16 activations do not lose the small variance terms.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


def make_norm(kind: str, dim: int, eps: float, bias: bool) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}")


# ---------------------------------------------------------------- positions
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


def rope_heads_last(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rope` for x laid out (B, T, heads, hs), computed in x's dtype (as Llama does under
    autocast); cos/sin: (B, T, hs) or (T, hs)."""
    cos, sin = cos.to(x.dtype).unsqueeze(-2), sin.to(x.dtype).unsqueeze(-2)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


# ---------------------------------------------------------------- KV cache
class KVCache:
    """Preallocated keys/values for every layer: (n_layer, B, n_kv_head, max_len, hs).

    `length` counts positions already written. Writing past `max_len` is an error
    rather than a silent reallocation, so memory use is known up front.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v (B, n_kv, T, hs) at the current position; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked for {end}")
        # Layer first: `k`/`v` may also be one tensor per layer (see infer.compiled.LayerKVCache).
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (beam search, dropping finished requests)."""
        self.k = self.k[:, index]
        self.v = self.v[:, index]


# ---------------------------------------------------------------- attention
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


class SelfAttention(nn.Module):
    """Multi-head self-attention with grouped KV heads (MHA when n_kv_head == n_head, MQA when 1).

    `head_dim` defaults to n_embd // n_head; `scale` multiplies the scores (default 1/sqrt(head_dim)).
    `mask` may be bool (True = attend) or an additive float bias such as T5's relative positions.
    `dropout` applies to the output projection and, unless `attention_dropout` is given, to the
    attention probabilities too; dropping probabilities forces SDPA off its fused CPU kernels.
    """

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int, *, bias: bool, dropout: float,
                 attention_dropout: float | None = None, causal: bool = True, rope_theta: float | None = None,
                 head_dim: int | None = None, scale: float | None = None):
        super().__init__()
        assert n_head % n_kv_head == 0 and (head_dim is not None or n_embd % n_head == 0)
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_dim = head_dim or n_embd // n_head
        self.causal = causal
        self.rope_theta = rope_theta
        self.dropout = dropout if attention_dropout is None else attention_dropout
        self.scale = scale
        self.use_naive = False  # flipped by tests to compare against the reference path
        self.qkv = nn.Linear(n_embd, (n_head + 2 * n_kv_head) * self.head_dim, bias=bias)
        self.proj = nn.Linear(n_head * self.head_dim, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, *, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
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
        y = attend(q, k, v, mask=mask, is_causal=is_causal, dropout=drop, scale=self.scale, naive=self.use_naive)
        y = y.transpose(1, 2).reshape(B, T, nh * hs)
        return self.resid_dropout(self.proj(y))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None, is_causal: bool,
           dropout: float, scale: float | None, naive: bool) -> torch.Tensor:
    """SDPA, or the naive reference when `naive`; (B, nh, T, hs) in and out."""
    if mask is not None and mask.is_floating_point():
        mask = mask.to(q.dtype)  # under autocast q is bf16, and SDPA wants an additive mask of the same dtype
    if naive:
        return naive_attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale)
    if _materialize_on_cpu(q, k):
        return materialized_attention(q, k, v, mask=mask, is_causal=is_causal, dropout=dropout, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                          scale=scale)


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


class CrossAttention(nn.Module):
    """Attention from decoder positions (queries) to a fixed memory such as an encoder output (keys/values).

    The memory's keys/values depend only on the memory, so `project_memory` computes them once and
    every decoding step reuses them.
    """

    def __init__(self, n_embd: int, n_head: int, *, head_dim: int | None = None, bias: bool, dropout: float,
                 scale: float | None = None):
        super().__init__()
        self.n_head = n_head
        self.head_dim = head_dim or n_embd // n_head
        self.dropout = dropout
        self.scale = scale
        self.use_naive = False
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
        y = attend(q, k, v, mask=mask, is_causal=False, dropout=drop, scale=self.scale, naive=self.use_naive)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.proj(y))


# ---------------------------------------------------------------- output layer + loss
# Logits handled at once by `linear_cross_entropy_sum`. On CPU 8 MB in fp32: small enough to stay in
# cache, large enough for efficient matmuls (measured fastest of 2^20..2^22, fp32 and bf16). A GPU has
# no such cache to fit and pays a kernel launch per operation per chunk, so it takes chunks of 512 MB.
CROSS_ENTROPY_CHUNK_ELEMENTS = 1 << 21
CROSS_ENTROPY_CHUNK_ELEMENTS_GPU = 1 << 27
# Below bf16/fp16 precision the logit gradients of all chunks are kept (up to this many bytes, at most
# half of what the fp32 logits alone would take) so the weight gradient is one matmul, not a running
# fp32 sum that costs a cast and an add of the whole (vocab, C) matrix per chunk.
CROSS_ENTROPY_GRAD_BUFFER_BYTES = 512 << 20


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                             ignore_index: int = -100) -> torch.Tensor:
    """sum over rows with labels != ignore_index of cross_entropy(hidden @ weight.T, labels), in fp32.

    Equal to `F.cross_entropy(F.linear(hidden, weight).float(), labels, reduction="sum")`, but the
    (N, vocab) logits are never held whole: they are formed a chunk of rows at a time and turned into
    the loss and both gradients at once. That saves the fp32 logits, their softmax and their gradient
    (three (N, vocab) tensors) and most of the memory traffic of the output layer.
    hidden: (N, C), weight: (vocab, C), labels: (N,). Under autocast the matmuls run in its dtype.
    """
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    chunk = CROSS_ENTROPY_CHUNK_ELEMENTS if device_type == "cpu" else CROSS_ENTROPY_CHUNK_ELEMENTS_GPU
    rows = max(1, chunk // weight.shape[0])
    return _LinearCrossEntropySum.apply(hidden, weight, labels, dtype, rows, ignore_index)


class _LinearCrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, dtype, rows, ignore_index):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            device = h.device
            n, vocab = h.shape[0], w.shape[0]
            rows = min(rows, n)
            total = torch.zeros((), dtype=torch.float32, device=device)
            grad_h = torch.empty_like(h) if need_h else None
            keep_logit_grads = (need_w and dtype != torch.float32
                                and n * vocab * h.element_size() <= CROSS_ENTROPY_GRAD_BUFFER_BYTES)
            logit_grads = torch.empty((n, vocab), dtype=dtype, device=device) if keep_logit_grads else None
            grad_w = (torch.zeros(weight.shape, dtype=torch.float32, device=device)
                      if need_w and not keep_logit_grads else None)
            # One set of chunk buffers for the whole loop: fresh multi-megabyte tensors per chunk
            # would cost page faults on a CPU. Each chunk makes three passes over its logits
            # (fp32 copy, log-softmax, exp into the gradient), not a pass per elementwise op.
            logits_buf = torch.empty((rows, vocab), dtype=dtype, device=device)
            float_buf = logits_buf if dtype == torch.float32 else torch.empty((rows, vocab), device=device)
            logp_buf = torch.empty((rows, vocab), dtype=torch.float32, device=device)
            check_rows = device.type == "cpu"  # a host-side test of the labels is free on CPU only
            for start in range(0, n, rows):
                hc, y = h[start:start + rows], labels[start:start + rows]
                m = hc.shape[0]
                logits = torch.mm(hc, w.t(), out=logits_buf[:m])
                lf = logits if float_buf is logits_buf else float_buf[:m].copy_(logits)
                logp = torch.log_softmax(lf, dim=1, out=logp_buf[:m])
                valid = y != ignore_index
                some_ignored = not check_rows or not bool(valid.all())
                y = torch.where(valid, y, 0) if some_ignored else y
                picked = logp.gather(1, y[:, None]).squeeze(1)  # log p(label)
                total -= (picked * valid).sum() if some_ignored else picked.sum()
                if need_h or need_w:
                    # d loss / d logits = softmax - one_hot(label), zero on ignored rows; the label's
                    # entry p - 1 is formed from log p in fp32 (expm1) before any rounding to `dtype`.
                    g = logit_grads[start:start + m] if keep_logit_grads else logits
                    torch.exp(logp, out=g)
                    g[torch.arange(m, device=device), y] = torch.expm1(picked).to(g.dtype)
                    if some_ignored:
                        g.masked_fill_(~valid[:, None], 0.0)
                    if need_h:
                        torch.mm(g, w, out=grad_h[start:start + m])
                    if need_w and not keep_logit_grads:
                        if dtype == torch.float32:
                            grad_w.addmm_(g.t(), hc)  # in place: no (vocab, C) temporary per chunk
                        else:
                            grad_w += g.t() @ hc  # bf16 product, fp32 running sum
            if keep_logit_grads:
                grad_w = (logit_grads.t() @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_w = ctx.saved_tensors
        gh = (grad_h * grad_total).to(ctx.dtypes[0]) if grad_h is not None else None
        gw = (grad_w * grad_total).to(ctx.dtypes[1]) if grad_w is not None else None
        return gh, gw, None, None, None, None


# ---------------------------------------------------------------- feed-forward
class MLP(nn.Module):
    """GELU MLP (GPT-2/BERT), ReLU MLP (T5, the original Transformer), SwiGLU (Llama) or GEGLU (T5 v1.1),
    chosen by `kind`."""

    def __init__(self, n_embd: int, hidden: int, *, kind: str, bias: bool, dropout: float):
        super().__init__()
        self.kind = kind
        if kind in ("swiglu", "geglu"):
            self.gate = nn.Linear(n_embd, hidden, bias=bias)
        elif kind not in ("gelu", "gelu_exact", "relu"):
            raise ValueError(f"unknown mlp {kind!r}")
        self.up = nn.Linear(n_embd, hidden, bias=bias)
        self.down = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)
        elif self.kind == "geglu":
            h = F.gelu(self.gate(x), approximate="tanh") * self.up(x)
        elif self.kind == "relu":
            h = F.relu(self.up(x))
        else:
            # GPT-2 uses the tanh approximation, BERT the exact erf form.
            h = F.gelu(self.up(x), approximate="tanh" if self.kind == "gelu" else "none")
        return self.dropout(self.down(h))

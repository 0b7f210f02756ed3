"""The output layer fused with its cross-entropy, so the (N, vocab) logits are never held whole."""
from __future__ import annotations

import torch

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

"""The fast CPU paths against the plain PyTorch formulations they replace."""
import pytest
import torch
import torch.nn.functional as F

import lmforge.models.common.attention as attention
import lmforge.models.common.loss as loss
from lmforge.config import TrainConfig
from lmforge.models.common.attention import materialized_attention
from lmforge.models.common.loss import linear_cross_entropy_sum
from lmforge.models.common.positions import apply_rope, rope_cos_sin, rope_heads_last
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.train.objectives import token_cross_entropy_sum
from lmforge.train.trainer import Trainer


def _qkv(B=2, nh=3, T=9, hs=8, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, nh, T, hs, generator=g).to(dtype).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("case", ["causal", "none", "bool", "float_bias", "float_bias_causal"])
def test_materialized_attention_matches_sdpa(case):
    q, k, v = _qkv()
    B, nh, T, _ = q.shape
    mask, is_causal = None, case in ("causal", "float_bias_causal")
    if case == "bool":
        mask = torch.rand(B, 1, 1, T, generator=torch.Generator().manual_seed(1)) > 0.3
        mask[..., 0] = True
    elif case.startswith("float_bias"):
        mask = torch.randn(1, nh, T, T).to(torch.bfloat16).requires_grad_()
    out = materialized_attention(q, k, v, mask=mask, is_causal=is_causal, dropout=0.0, scale=None)
    ref_mask = mask
    if mask is not None and mask.is_floating_point():
        ref_mask = mask.float()
        if is_causal:
            ref_mask = ref_mask.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    q32, k32, v32 = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(q32, k32, v32, attn_mask=ref_mask,
                                         is_causal=is_causal and not (mask is not None and mask.is_floating_point()))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    grad = torch.randn_like(ref)
    out.backward(grad.bfloat16())
    ref.backward(grad)
    torch.testing.assert_close(q.grad.float(), q32.grad, atol=5e-2, rtol=5e-2)


def test_attend_uses_materialized_path_only_for_small_bf16_cpu_scores(monkeypatch):
    q, k, v = _qkv()
    calls = []
    monkeypatch.setattr(attention, "materialized_attention", lambda *a, **kw: calls.append(1) or a[0])
    attention.attend(q, k, v, mask=None, is_causal=True, dropout=0.0, scale=None)
    assert calls == [1]
    attention.attend(q.float(), k.float(), v.float(), mask=None, is_causal=True, dropout=0.0, scale=None)
    monkeypatch.setattr(attention, "MATERIALIZE_MAX_SCORES", 10)
    attention.attend(q, k, v, mask=None, is_causal=True, dropout=0.0, scale=None)
    assert calls == [1]


def test_attend_materializes_bf16_decode_steps_of_a_batch_only(monkeypatch):
    q, k, v = _qkv(B=2, T=9)
    one_token = q[:, :, -1:]
    calls = []
    monkeypatch.setattr(attention, "materialized_attention", lambda *a, **kw: calls.append(a[0].shape[0]) or a[0])
    attention.attend(one_token, k, v, mask=None, is_causal=False, dropout=0.0, scale=None)
    attention.attend(one_token[:1], k[:1], v[:1], mask=None, is_causal=False, dropout=0.0, scale=None)
    assert calls == [2]  # two rows: materialized; a single row: SDPA's fused kernel


def test_materialized_decode_step_matches_sdpa():
    q, k, v = _qkv(B=8, T=40)
    q = q[:, :, -1:].detach()
    keep = torch.arange(40)[None, None, None, :] < torch.randint(5, 41, (8, 1, 1, 1))  # per-row key lengths
    out = materialized_attention(q, k.detach(), v.detach(), mask=keep, is_causal=False, dropout=0.0, scale=None)
    ref = F.scaled_dot_product_attention(q.float(), k.detach().float(), v.detach().float(), attn_mask=keep)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_rope_heads_last_matches_apply_rope():
    x = torch.randn(2, 5, 3, 8)
    for positions in (torch.arange(5), torch.arange(5)[None].expand(2, 5)):
        cos, sin = rope_cos_sin(positions, 8, 10000.0)
        expected = apply_rope(x.transpose(1, 2), cos, sin).transpose(1, 2)
        torch.testing.assert_close(rope_heads_last(x, cos, sin), expected)


@pytest.mark.parametrize("chunk", [1 << 21, 64, 50])  # one chunk, several chunks, a ragged last chunk
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("ignored", [True, False])
@pytest.mark.parametrize("keep_logit_grads", [True, False])
def test_linear_cross_entropy_sum_matches_cross_entropy(monkeypatch, chunk, precision, ignored, keep_logit_grads):
    monkeypatch.setattr(loss, "CROSS_ENTROPY_CHUNK_ELEMENTS", chunk)
    if not keep_logit_grads:
        monkeypatch.setattr(loss, "CROSS_ENTROPY_GRAD_BUFFER_BYTES", 0)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(24, 16, generator=g).requires_grad_()
    w = (torch.randn(11, 16, generator=g) * 0.5).requires_grad_()
    y = torch.randint(0, 11, (24,), generator=g)
    if ignored:
        y[3:7] = -100
    bf16 = precision == "bf16"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ref = F.cross_entropy(F.linear(h, w).float(), y, ignore_index=-100, reduction="sum")
    ref.backward()
    ref_grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = linear_cross_entropy_sum(h, w, y)
    out.backward()
    tol = dict(atol=2e-2, rtol=2e-2) if bf16 else dict(atol=1e-5, rtol=1e-5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.detach(), **tol)
    torch.testing.assert_close(h.grad, ref_grads[0], **tol)
    torch.testing.assert_close(w.grad, ref_grads[1], **tol)


def test_gpt_loss_from_labels_equals_loss_from_logits(tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)
    x, y = torch.randint(0, 50, (3, 16)), torch.randint(0, 50, (3, 16))
    y[0, :4] = -100
    model = GPT(cfg)
    torch.testing.assert_close(model(x, labels=y), token_cross_entropy_sum(model(x), y), rtol=1e-6, atol=1e-4)
    # One SGD step through each path ends at the same weights (Adam would amplify rounding in tiny gradients).
    weights = []
    for fused in (True, False):
        torch.manual_seed(0)
        m = GPT(cfg)
        m.sums_loss_from_labels = fused
        cfg_sgd = TrainConfig(optimizer="sgd", momentum=0.0, lr=0.1, weight_decay=0.0, warmup_steps=0,
                              schedule="constant", grad_clip=None, progress=False)
        Trainer(m, None, cfg_sgd, tmp_path).train_step([(x, y)])
        weights.append({k: v.clone() for k, v in m.state_dict().items()})
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=1e-5, atol=1e-6)

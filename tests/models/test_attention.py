"""SDPA attention against the textbook softmax(QK^T/sqrt(d))V reference, alone and inside the model."""
import pytest
import torch
import torch.nn.functional as F

from lmforge.models.common.attention import (SelfAttention, attend, causal_mask, naive_attend, naive_attention,
                                             use_naive_attention)
from lmforge.models.registry import build_model

ATOL = 1e-5


def _qkv(B=2, nh=4, T=7, S=7, hs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, nh, T, hs, generator=g), torch.randn(B, nh, S, hs, generator=g),
            torch.randn(B, nh, S, hs, generator=g))


def test_sdpa_matches_naive_causal():
    q, k, v = _qkv()
    ref = naive_attention(q, k, v, is_causal=True)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_naive_causal_is_really_causal():
    # Row i of the reference must equal attention over the first i+1 keys only.
    q, k, v = _qkv(B=1, nh=1, T=5, S=5)
    ref = naive_attention(q, k, v, is_causal=True)
    for i in range(5):
        w = torch.softmax(q[..., i:i + 1, :] @ k[..., :i + 1, :].transpose(-2, -1) / 4.0, dim=-1)
        torch.testing.assert_close(ref[..., i:i + 1, :], w @ v[..., :i + 1, :], atol=ATOL, rtol=0)


@pytest.mark.parametrize("T,S", [(7, 7), (3, 9), (1, 9)])
def test_sdpa_matches_naive_with_padding_mask(T, S):
    q, k, v = _qkv(T=T, S=S)
    padding = torch.ones(2, S, dtype=torch.bool)
    padding[0, :3] = False  # left padding on the first row
    mask = causal_mask(T, S, q.device, padding)
    ref = naive_attention(q, k, v, mask=mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    # Keys that are padding must get zero weight: changing them must not change real rows.
    k2, v2 = k.clone(), v.clone()
    k2[0, :, :3] += 5.0
    v2[0, :, :3] -= 5.0
    out2 = F.scaled_dot_product_attention(q, k2, v2, attn_mask=mask)
    real_rows = slice(max(0, 3 - (S - T)), T)
    torch.testing.assert_close(out2[0, :, real_rows], out[0, :, real_rows], atol=ATOL, rtol=0)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])  # MHA, GQA, MQA
@pytest.mark.parametrize("with_mask", [False, True])
def test_self_attention_module_sdpa_vs_naive(n_kv_head, with_mask):
    torch.manual_seed(0)
    attn = SelfAttention(64, 4, n_kv_head, bias=True, dropout=0.0, rope_theta=10000.0).eval()
    x = torch.randn(3, 10, 64)
    mask = None
    if with_mask:
        padding = torch.ones(3, 10, dtype=torch.bool)
        padding[1, :4] = False
        padding[2, :1] = False
        mask = causal_mask(10, 10, x.device, padding)
    with torch.no_grad():
        fast = attn(x, mask=mask)
        with use_naive_attention(attn):
            slow = attn(x, mask=mask)
    torch.testing.assert_close(fast, slow, atol=ATOL, rtol=0)


def test_gqa_uses_the_right_kv_head():
    # Independent GQA reference: query head h attends with kv head h // (n_head / n_kv_head).
    torch.manual_seed(0)
    attn = SelfAttention(32, 4, 2, bias=False, dropout=0.0).eval()
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        out = attn(x)
        q, k, v = attn.qkv(x).split([32, 16, 16], dim=-1)
        q = q.view(1, 6, 4, 8).transpose(1, 2)
        k = k.view(1, 6, 2, 8).transpose(1, 2)
        v = v.view(1, 6, 2, 8).transpose(1, 2)
        heads = [naive_attention(q[:, h:h + 1], k[:, h // 2:h // 2 + 1], v[:, h // 2:h // 2 + 1], is_causal=True)
                 for h in range(4)]
        ref = attn.proj(torch.cat(heads, dim=1).transpose(1, 2).reshape(1, 6, 32))
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def _attention_fns(model):
    return [m.attention_fn for m in model.modules() if isinstance(m, SelfAttention)]


def test_naive_attention_is_switched_on_for_the_block_only():
    model = build_model("debug")
    with use_naive_attention(model) as same:
        assert same is model
        assert _attention_fns(model) == [naive_attend] * model.config.n_layer
    assert _attention_fns(model) == [attend] * model.config.n_layer
    with pytest.raises(RuntimeError), use_naive_attention(model):
        raise RuntimeError("the fast path comes back on an error too")
    assert _attention_fns(model) == [attend] * model.config.n_layer


def test_attention_fn_is_a_constructor_argument():
    torch.manual_seed(0)
    fast = SelfAttention(32, 4, 2, bias=False, dropout=0.0).eval()
    slow = SelfAttention(32, 4, 2, bias=False, dropout=0.0, attention_fn=naive_attend).eval()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), slow(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("preset", ["debug", "llama-debug"])
def test_whole_model_naive_equals_sdpa(preset):
    torch.manual_seed(0)
    model = build_model(preset).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    padding = torch.ones(2, 24, dtype=torch.bool)
    padding[1, :5] = False
    with torch.no_grad():
        fast = model(ids)
        fast_masked = model(ids, attention_mask=padding)
        cache = model.new_kv_cache(2, 32)
        model(ids[:, :20], kv_cache=cache)
        cache.advance(20)
        fast_cached = model(ids[:, 20:], kv_cache=cache)  # T=4 new tokens over 24 keys
        with use_naive_attention(model):
            slow = model(ids)
            slow_masked = model(ids, attention_mask=padding)
            cache = model.new_kv_cache(2, 32)
            model(ids[:, :20], kv_cache=cache)
            cache.advance(20)
            slow_cached = model(ids[:, 20:], kv_cache=cache)
    torch.testing.assert_close(fast, slow, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast_masked, slow_masked, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast_cached, slow_cached, atol=ATOL, rtol=0)
    # And the cached continuation equals the full forward for those positions.
    torch.testing.assert_close(fast_cached, fast[:, 20:], atol=ATOL, rtol=0)

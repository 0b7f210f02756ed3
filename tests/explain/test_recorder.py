"""Attention probabilities recorded from lmforge's own attention layers against the naive reference.

The reference probabilities are `naive_attention(q, k, I)`: the textbook softmax(QK^T * scale + mask)
times an identity V, computed from the very q, k and mask each layer hands its attention function
while the model runs on the naive path.
"""
import pytest
import torch

from lmforge.models.common.attention_record import attention_layers, record_attention
from lmforge.models.heads import TaskModel, TaskModelConfig
from lmforge.models.common.attention import CrossAttention, SelfAttention, attend, naive_attend, naive_attention
from lmforge.models.registry import build_model

TOL = 1e-6


def _reference(model, run):
    """{module name: probabilities (B, nh, T, S)} of each attention call while `run()` goes the naive path."""
    seen, own = {}, {}

    def capture(name):
        def fn(q, k, v, *, mask, is_causal, dropout, scale):
            B, nh, S = k.shape[0], k.shape[1], k.shape[2]
            eye = torch.eye(S, dtype=q.dtype).expand(B, nh, S, S)
            m = mask.to(q.dtype) if mask is not None and mask.is_floating_point() else mask
            seen[name] = naive_attention(q, k, eye, mask=m, is_causal=is_causal, scale=scale)
            return naive_attend(q, k, v, mask=mask, is_causal=is_causal, dropout=dropout, scale=scale)
        return fn

    for name, module in model.named_modules():
        if isinstance(module, (SelfAttention, CrossAttention)):
            own[name] = module.attention_fn
            module.attention_fn = capture(name)
    try:
        with torch.no_grad():
            out = run()
    finally:
        for name, module in model.named_modules():
            if name in own:
                module.attention_fn = own[name]
    return seen, out


def _compare(model, run, expected_names):
    reference, naive_out = _reference(model, run)
    assert set(reference) == set(expected_names)
    with torch.no_grad():
        fused_out = run()
        with record_attention(model) as record:
            recorded_out = run()
    for name, (kind, layer) in expected_names.items():
        got = record.maps[kind][layer][0]
        assert got.shape == reference[name].shape
        assert torch.allclose(got, reference[name], atol=TOL, rtol=0), (name, (got - reference[name]).abs().max())
    assert torch.allclose(recorded_out, naive_out, atol=1e-5) and torch.allclose(recorded_out, fused_out, atol=1e-4)
    # The fused kernel is back on every layer once the block is left.
    assert all(m.attention_fn is attend for _, _, m in attention_layers(model))
    return record


def _model(preset, **overrides):
    torch.manual_seed(0)
    return build_model(preset, **overrides).eval()


@pytest.mark.parametrize("preset", ["debug", "llama-debug"])
def test_gpt_causal_and_left_padded(preset):
    model = _model(preset, init_std=0.2)
    ids = torch.randint(0, 500, (2, 9))
    names = {f"blocks.{i}.attn": ("self", i) for i in range(2)}
    record = _compare(model, lambda: model(ids), names)  # causal through SDPA's is_causal
    probs = record.layers("self")  # (L, B, nh, T, S)
    assert torch.all(probs.triu(diagonal=1) == 0)
    padding = torch.ones(2, 9, dtype=torch.long)
    padding[1, :3] = 0
    record = _compare(model, lambda: model(ids, attention_mask=padding), names)
    probs = record.layers("self")
    assert torch.all(probs[:, 1, :, 3:, :3] == 0), "a padded key got probability"
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-6)


def test_bert_with_padding():
    model = _model("bert-debug")
    ids = torch.randint(1, 1000, (2, 11))
    padding = torch.ones(2, 11, dtype=torch.long)
    padding[0, 7:] = 0
    names = {f"blocks.{i}.attn": ("self", i) for i in range(2)}
    record = _compare(model, lambda: model(ids, attention_mask=padding), names)
    probs = record.layers("self")
    assert probs.shape == (2, 2, 4, 11, 11)
    assert torch.all(probs[:, 0, :, :, 7:] == 0)
    assert torch.all(probs[:, 1] > 0), "an unpadded encoder row attends to every key"


@pytest.mark.parametrize("overrides", [{}, {"position": "sinusoidal", "norm": "layernorm", "norm_position": "post",
                                            "bias": True, "scaled_attention": True, "scale_embeddings": True}])
def test_t5_self_and_cross_attention_with_padding(overrides):
    model = _model("t5-debug", **overrides)
    src = torch.randint(1, 500, (2, 10))
    tgt = torch.randint(1, 500, (2, 6))
    padding = torch.ones(2, 10, dtype=torch.long)
    padding[1, 6:] = 0
    names = {**{f"encoder.blocks.{i}.attn": ("encoder.self", i) for i in range(2)},
             **{f"decoder.blocks.{i}.attn": ("decoder.self", i) for i in range(2)},
             **{f"decoder.blocks.{i}.cross_attn": ("decoder.cross", i) for i in range(2)}}
    record = _compare(model, lambda: model(src, attention_mask=padding, decoder_input_ids=tgt), names)
    assert record.layers("decoder.cross").shape == (2, 2, 4, 6, 10)
    assert torch.all(record.layers("decoder.cross")[:, 1, :, :, 6:] == 0)
    assert torch.all(record.layers("encoder.self")[:, 1, :, :, 6:] == 0)
    assert torch.all(record.layers("decoder.self").triu(diagonal=1) == 0)


def test_task_model_layers_are_named_by_their_stack():
    backbone = _model("t5-debug")
    model = TaskModel(TaskModelConfig(backbone=backbone.config.to_dict(), labels=["a", "b"]), backbone)
    kinds = [(kind, layer) for kind, layer, _ in attention_layers(model)]
    assert kinds == [("encoder.self", 0), ("encoder.self", 1), ("decoder.self", 0), ("decoder.cross", 0),
                     ("decoder.self", 1), ("decoder.cross", 1)]


def test_recording_cached_decoding_matches_the_full_pass():
    model = _model("debug", init_std=0.2)
    ids = torch.randint(0, 500, (1, 8))
    with torch.no_grad(), record_attention(model) as full:
        model(ids)
    cache = model.new_kv_cache(1)
    with torch.no_grad(), record_attention(model) as steps:
        model(ids[:, :5], kv_cache=cache)
        cache.advance(5)
        model(ids[:, 5:], kv_cache=cache)
    last = steps.maps["self"][1][1]  # (1, nh, 3, 8): the three cached-step queries over all eight keys
    assert torch.allclose(last, full.maps["self"][1][0][:, :, 5:], atol=1e-6)

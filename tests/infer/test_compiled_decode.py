"""Compiled decoding against the eager decoder it replaces: same tokens, fresh weights, clear refusals.

Each compiled (model, batch size, cache bucket) costs one inductor compilation (several seconds on
two cores), so the tests share models and shapes where they can.
"""
import shutil

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.infer.compiled import CACHE_BUCKET, CompiledDecoder, LayerKVCache, cache_length
from lmforge.infer.generate import generate, generate_completions
from lmforge.infer.sampling import SamplingParams
from lmforge.models.registry import build_model

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                                    reason="compiled decoding needs a C++ compiler (inductor)")
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)


def _model(preset):
    torch.manual_seed(0)
    # A larger init than training uses, so greedy decoding of a random model sees varied tokens.
    return build_model(preset, init_std=0.2).eval()


@pytest.fixture(scope="module")
def debug_model():
    return _model("debug")


def test_cache_length_rounds_up_to_a_bucket_within_the_context():
    assert cache_length(1, 1024) == CACHE_BUCKET
    assert cache_length(CACHE_BUCKET, 1024) == CACHE_BUCKET
    assert cache_length(CACHE_BUCKET + 1, 1024) == 2 * CACHE_BUCKET
    assert cache_length(CACHE_BUCKET + 1, CACHE_BUCKET + 5) == CACHE_BUCKET + 5


def test_layer_cache_matches_the_stacked_cache():
    model = _model("debug")
    cfg = model.config
    stacked = model.new_kv_cache(2, 16)
    layered = LayerKVCache(cfg.n_layer, 2, cfg.n_kv_head, 16, cfg.head_dim, dtype=torch.float32, device="cpu")
    x = torch.randint(0, cfg.vocab_size, (2, 5))
    with torch.no_grad():
        a = model(x, kv_cache=stacked)
        b = model(x, kv_cache=layered)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    stacked.reorder(torch.tensor([1]))
    layered.reorder(torch.tensor([1]))
    for layer in range(cfg.n_layer):
        torch.testing.assert_close(layered.k[layer], stacked.k[layer], rtol=0, atol=0)
        torch.testing.assert_close(layered.v[layer], stacked.v[layer], rtol=0, atol=0)


@needs_compiler
@pytest.mark.parametrize("preset", ["debug", "llama-debug"])  # learned positions + MHA; RoPE + GQA + SwiGLU
def test_compiled_greedy_decoding_equals_eager_on_a_padded_batch(preset, debug_model):
    model = debug_model if preset == "debug" else _model(preset)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8]]  # left padding: row 1 must not see row 0's extra columns
    eager = generate(model, prompts, GREEDY)
    compiled = generate(model, prompts, GREEDY, compile=True)
    assert compiled == eager
    assert all(len(row) == GREEDY.max_new_tokens for row in compiled)
    # Another generation of the same batch size and cache bucket reuses the compiled step.
    decoder = CompiledDecoder.for_model(model)
    assert generate(model, [[3, 1, 4], [1, 5, 9, 2, 6]], GREEDY, compile=True) == \
        generate(model, [[3, 1, 4], [1, 5, 9, 2, 6]], GREEDY)
    assert CompiledDecoder.for_model(model) is decoder


@needs_compiler
def test_compiled_decoding_sees_weights_changed_after_compiling():
    model = _model("debug")
    prompts = [[5, 4, 3], [2, 1, 7]]
    before = generate(model, prompts, GREEDY, compile=True)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)  # in place: the compiled graph froze the old values
    after_eager = generate(model, prompts, GREEDY)
    assert after_eager != before
    assert generate(model, prompts, GREEDY, compile=True) == after_eager


@needs_compiler
def test_compiled_decoding_keeps_stop_rules_and_sampling_seeds(debug_model):
    model = debug_model
    prompts = [[5, 4, 3], [2, 1, 7]]
    eos = generate(model, prompts, GREEDY)[0][3]  # a token greedy decoding reaches: row 0 ends there
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    eager = generate_completions(model, prompts, params, eos_id=eos)
    compiled = generate_completions(model, prompts, params, eos_id=eos, compile=True)
    assert [(c.ids, c.finish_reason) for c in compiled] == [(c.ids, c.finish_reason) for c in eager]
    assert compiled[0].finish_reason == "eos"
    sampled = SamplingParams(temperature=0.8, top_k=20, max_new_tokens=12, seed=3)
    a = generate(model, prompts, sampled, compile=True)
    assert a == generate(model, prompts, sampled, compile=True)  # seeded: reproducible
    assert all(0 <= t < model.config.vocab_size for row in a for t in row)


def test_compiled_decoding_refuses_what_it_does_not_support():
    lstm = build_model("lstm-debug").eval()
    with pytest.raises(ConfigError, match="GPT-family"):
        generate(lstm, [[1, 2]], GREEDY, compile=True)
    with pytest.raises(ConfigError, match="KV cache"):
        generate(_model("debug"), [[1, 2]], GREEDY, compile=True, use_cache=False)

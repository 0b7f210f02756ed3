"""Generation: cached vs uncached vs one-prompt-at-a-time, sampling rules, stopping, limits."""
import io
import math

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.infer.generate import TextStreamer, generate, generate_completions, generate_text
from lmforge.infer.sampling import (SamplingParams, apply_repetition_penalty, apply_temperature, sample_next,
                                    top_k_filter, top_p_filter)
from lmforge.models.registry import build_model

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [11, 12, 13, 14], [20]]
CORPUS = ["The quick brown fox jumps over the lazy dog. " * 3,
          "User: hello there\nAssistant: hi, how are you?\n",
          "Pack my box with five dozen liquor jugs!"]


def _model(preset, **kw):
    # A larger init than training uses, so greedy decoding of a random model does not
    # collapse into repeating one token and the comparisons below see varied sequences.
    torch.manual_seed(0)
    return build_model(preset, init_std=0.2, **kw).eval()


@pytest.fixture(scope="module", params=["debug", "llama-debug"])
def model(request):
    return _model(request.param)


@pytest.fixture(scope="module")
def char_tok():
    from lmforge.data.tokenizers import train_tokenizer

    return train_tokenizer("char", CORPUS, vocab_size=0)


@pytest.fixture(scope="module")
def bpe_tok():
    from lmforge.data.tokenizers import train_tokenizer

    return train_tokenizer("bpe", CORPUS * 5, vocab_size=300)


# ---------------------------------------------------------------- the decode loop
def test_cached_equals_uncached_greedy_and_each_prompt_alone(model):
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    cached = generate(model, PROMPTS, params)
    assert cached == generate(model, PROMPTS, params, use_cache=False)
    assert all(len(set(row)) > 3 for row in cached)  # not a degenerate repetition
    for prompt, row in zip(PROMPTS, cached):
        assert generate(model, [prompt], params) == [row]
        assert generate(model, [prompt], params, use_cache=False) == [row]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0, seed=7, max_new_tokens=12),
    SamplingParams(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.3, seed=3, max_new_tokens=12),
], ids=["plain", "filtered"])
def test_cached_equals_uncached_sampled(model, params):
    cached = generate(model, PROMPTS, params)
    assert cached == generate(model, PROMPTS, params, use_cache=False)
    assert cached == generate(model, PROMPTS, params)  # same seed, same samples


def test_greedy_with_repetition_penalty_matches_uncached(model):
    params = SamplingParams(temperature=0.0, repetition_penalty=1.5, max_new_tokens=12)
    cached = generate(model, PROMPTS, params)
    assert cached == generate(model, PROMPTS, params, use_cache=False)
    # Pads must not count as seen tokens: a padded row equals the row alone.
    for prompt, row in zip(PROMPTS, cached):
        assert generate(model, [prompt], params) == [row]


def test_seeds_make_sampling_reproducible():
    model = _model("debug")
    a = generate(model, PROMPTS, SamplingParams(seed=1, max_new_tokens=16))
    b = generate(model, PROMPTS, SamplingParams(seed=1, max_new_tokens=16))
    c = generate(model, PROMPTS, SamplingParams(seed=2, max_new_tokens=16))
    assert a == b and a != c


def test_num_samples_gives_rows_per_prompt():
    model = _model("debug")
    out = generate(model, PROMPTS[:2], SamplingParams(seed=0, num_samples=3, max_new_tokens=5))
    assert len(out) == 6 and all(len(r) == 5 for r in out)
    assert len({tuple(r) for r in out[:3]}) > 1  # samples of one prompt differ


def test_max_new_tokens_respected_and_clipped_to_context():
    model = _model("debug")
    block = model.config.block_size
    assert [len(r) for r in generate(model, PROMPTS, SamplingParams(temperature=0, max_new_tokens=9))] == [9] * 4
    long_prompt = list(range(1, block - 3 + 1))  # leaves room for 3 tokens
    out = generate(model, [long_prompt, [1, 2]], SamplingParams(temperature=0, max_new_tokens=50))
    assert [len(r) for r in out] == [3, 3]


def test_prompt_too_long_raises_config_error():
    model = _model("debug")
    block = model.config.block_size
    for n in (block, block + 10):
        with pytest.raises(ConfigError, match=f"prompt has {n} tokens but the model's context length is {block}"):
            generate(model, [[1] * n], SamplingParams())
    with pytest.raises(ConfigError):
        generate(model, [[]], SamplingParams())
    with pytest.raises(ConfigError):
        generate(model, [[model.config.vocab_size]], SamplingParams())


def test_eos_stops_each_row_independently():
    model = _model("llama-debug")
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    free = generate(model, PROMPTS, params)
    eos = free[0][5]
    out = generate_completions(model, PROMPTS, params, eos_id=eos)
    for row, c in zip(free, out):
        expected = row[:row.index(eos)] if eos in row else row
        assert c.ids == expected
        assert c.finish_reason == ("eos" if eos in row else "length")
    assert out[0].finish_reason == "eos" and len(out[0].ids) <= 5


def test_stream_callback_sees_every_token_in_order():
    model = _model("debug")
    seen: dict[int, list[int]] = {}
    out = generate(model, PROMPTS, SamplingParams(seed=5, max_new_tokens=6),
                   stream=lambda row, tok: seen.setdefault(row, []).append(tok))
    assert [seen[i] for i in range(len(PROMPTS))] == out


# ---------------------------------------------------------------- stop strings and text
def test_stop_strings_cut_text_and_ids(char_tok):
    model = _model("llama-debug", vocab_size=char_tok.vocab_size)
    prompt = [char_tok.encode("User: hello")]
    free = generate(model, prompt, SamplingParams(temperature=0, max_new_tokens=30))[0]
    text = char_tok.decode(free)
    stop = text[8:10]
    expected = text[:text.find(stop)]
    [c] = generate_completions(model, prompt, SamplingParams(temperature=0, max_new_tokens=30, stop=[stop, "@@"]),
                               tokenizer=char_tok)
    assert c.finish_reason == "stop" and c.text == expected
    assert char_tok.decode(c.ids) == expected  # one token per character: the cut is exact
    with pytest.raises(ConfigError, match="tokenizer"):
        generate(model, prompt, SamplingParams(stop=["x"]))


def test_stop_string_with_multi_character_tokens(bpe_tok):
    model = _model("debug", vocab_size=bpe_tok.vocab_size)
    prompt = [bpe_tok.encode("The quick brown")]
    free = generate(model, prompt, SamplingParams(temperature=0, max_new_tokens=30))[0]
    text = bpe_tok.decode(free)
    stop = text[len(text) // 2:len(text) // 2 + 2]
    expected = text[:text.find(stop)]
    [c] = generate_completions(model, prompt, SamplingParams(temperature=0, max_new_tokens=30, stop=[stop]),
                               tokenizer=bpe_tok)
    assert c.text == expected
    assert bpe_tok.decode(c.ids).startswith(expected) and c.ids == free[:len(c.ids)]
    assert not bpe_tok.decode(c.ids[:-1]).startswith(expected) or expected == ""


def test_generate_text_shapes(char_tok):
    model = _model("debug", vocab_size=char_tok.vocab_size)
    out = generate_text(model, char_tok, ["User: hi", "Pack"], SamplingParams(seed=0, num_samples=2,
                                                                             max_new_tokens=8))
    assert len(out) == 2 and all(len(s) == 2 and all(isinstance(t, str) for t in s) for s in out)
    assert generate_text(model, char_tok, [""], SamplingParams(seed=0, max_new_tokens=3))  # starts from eos


def test_text_streamer_never_prints_half_characters(bpe_tok):
    text = "ok: héllo 世界 😀!"
    ids = bpe_tok.encode(text)
    assert bpe_tok.decode(ids) == text
    assert any(bpe_tok.decode([i]).endswith("\ufffd") for i in ids)  # some characters span tokens
    out = io.StringIO()
    streamer = TextStreamer(bpe_tok, out)
    for i in ids:
        streamer(0, i)
        assert "\ufffd" not in out.getvalue()
        assert text.startswith(out.getvalue())
    streamer(1, ids[0])  # other rows are ignored
    assert streamer.end() == text and out.getvalue() == text


def test_text_streamer_holds_back_stop_strings(char_tok):
    text = "hi there\nUser: more"
    out = io.StringIO()
    streamer = TextStreamer(char_tok, out, stop=["\nUser:"])
    for i in char_tok.encode(text):
        streamer(0, i)
        assert "\n" not in out.getvalue()
    assert streamer.end() == "hi there" and out.getvalue() == "hi there"


# ---------------------------------------------------------------- sampling functions
def test_sampling_params_validation():
    for bad in (dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1),
                dict(repetition_penalty=0.0), dict(max_new_tokens=0), dict(num_samples=0), dict(stop=[""])):
        with pytest.raises(ConfigError):
            SamplingParams(**bad)
    assert SamplingParams(stop="\n").stop == ["\n"]
    SamplingParams(temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0)


def test_repetition_penalty_rule():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0], [1.0, 1.0, -2.0, 4.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1], [3, 3, 3]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, -3.0], [1.0, 1.0, -2.0, 2.0]]
    ragged = apply_repetition_penalty(logits, [[0, 1], [2]], 2.0)
    assert ragged.tolist() == [[1.0, -2.0, 0.5, -3.0], [1.0, 1.0, -4.0, 4.0]]
    assert apply_repetition_penalty(logits, [[], [2]], 2.0)[0].tolist() == logits[0].tolist()
    assert apply_repetition_penalty(logits, [[0]], 1.0) is logits


def test_temperature_and_greedy():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.0]])
    assert torch.equal(apply_temperature(logits, 0.5), logits * 2)
    assert sample_next(logits, temperature=0.0).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, temperature=1.0, top_k=1, generator=g).tolist() == [1, 0]
    assert sample_next(logits, temperature=5.0, top_p=1e-6, generator=g).tolist() == [1, 0]


def test_top_k_keeps_k():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(top_k_filter(logits, 2))[0].tolist()
    assert kept == [False, True, False, True, False]
    assert torch.equal(top_k_filter(logits, 0), logits) and torch.equal(top_k_filter(logits, None), logits)
    assert torch.equal(top_k_filter(logits, 10), logits)


@pytest.mark.parametrize("p, n_kept", [(0.3, 1), (0.6, 2), (0.8, 3), (0.95, 4), (1.0, 4)])
def test_top_p_keeps_the_minimal_nucleus(p, n_kept):
    probs = [0.15, 0.5, 0.1, 0.25]  # sorted: 0.5, 0.25, 0.15, 0.1 -> cumulative 0.5, 0.75, 0.9, 1.0
    logits = torch.tensor([[math.log(x) for x in probs]])
    kept = torch.isfinite(top_p_filter(logits, p))[0]
    assert int(kept.sum()) == n_kept
    order = sorted(range(4), key=lambda i: -probs[i])
    assert all(kept[i] for i in order[:n_kept])  # the most likely ones, top token always


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = probs.log().expand(20000, 4)
    g = torch.Generator().manual_seed(0)
    freq = torch.bincount(sample_next(logits, temperature=1.0, generator=g), minlength=4) / 20000
    assert torch.allclose(freq, probs, atol=0.02)
    # top-k 2 renormalises over the two most likely tokens.
    freq = torch.bincount(sample_next(logits, temperature=1.0, top_k=2, generator=g), minlength=4) / 20000
    assert torch.allclose(freq, torch.tensor([0.0, 0.0, 3 / 7, 4 / 7]), atol=0.02)


@pytest.mark.parametrize("preset", ["debug", "llama-debug"])
def test_prepare_for_inference_changes_nothing_observable(tmp_path, preset):
    from lmforge.infer.generate import prepare_for_inference
    from lmforge.models.registry import load_model, save_model

    model = _model(preset)
    ids = torch.randint(0, model.config.vocab_size, (2, 10))
    with torch.no_grad():
        before = model(ids)
    expected = generate(model, PROMPTS, SamplingParams(temperature=0, max_new_tokens=8))
    assert prepare_for_inference(prepare_for_inference(model)) is model  # idempotent
    assert model.blocks[0].attn.qkv.weight.stride() == (1, model.blocks[0].attn.qkv.weight.shape[0])
    assert (model.lm_head.weight is model.wte.weight) == model.config.tie_embeddings
    with torch.no_grad():
        torch.testing.assert_close(model(ids), before, atol=1e-5, rtol=0)
    assert generate(model, PROMPTS, SamplingParams(temperature=0, max_new_tokens=8)) == expected
    save_model(model, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path)(ids), before, atol=1e-5, rtol=0)

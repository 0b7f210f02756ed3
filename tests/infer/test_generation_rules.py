"""Rules that depend on what was generated (repetition penalty, no repeated n-gram, minimum length)
against naive references over logits, and through every decoding path: `generate`, the serving
engine, and encoder-decoder greedy and beam search."""
import random

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.infer.engine import Engine
from lmforge.infer.generate import generate
from lmforge.infer.sampling import (SamplingParams, apply_repetition_penalty, apply_rules, ban_repeated_ngrams,
                                    banned_ngram_tokens)
from lmforge.infer.seq2seq import TargetRules, generate_seq2seq
from lmforge.models.registry import build_model, preset_config
from lmforge.models.t5 import T5

V = 12


def _ngrams(tokens: list[int], n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _naive_ban(logits: torch.Tensor, histories, n: int) -> torch.Tensor:
    """A candidate is banned when appending it makes an n-gram that already occurs: checked for every
    token of the vocabulary by building the extended sequence."""
    out = logits.clone()
    for row, tokens in enumerate(histories):
        seen = set(_ngrams(list(tokens), n))
        for v in range(logits.shape[1]):
            if len(tokens) + 1 >= n and tuple((list(tokens) + [v])[-n:]) in seen:
                out[row, v] = float("-inf")
    return out


def _naive_penalty(logits: torch.Tensor, histories, penalty: float) -> torch.Tensor:
    out = logits.clone()
    for row, tokens in enumerate(histories):
        for v in set(tokens):
            x = logits[row, v].item()
            out[row, v] = x / penalty if x > 0 else x * penalty
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_ban_equals_the_naive_rule(n):
    rng = random.Random(n)
    for _ in range(200):
        histories = [[rng.randrange(4) for _ in range(rng.randrange(0, 14))] for _ in range(3)]
        logits = torch.randn(3, V)
        assert torch.equal(ban_repeated_ngrams(logits, histories, n), _naive_ban(logits, histories, n))
        for tokens in histories:
            assert banned_ngram_tokens(tokens, n) == {v for v in range(V) if len(tokens) + 1 >= n
                                                      and tuple((tokens + [v])[-n:]) in set(_ngrams(tokens, n))}


def test_repetition_penalty_equals_the_naive_rule():
    rng = random.Random(0)
    for _ in range(100):
        histories = [[rng.randrange(V) for _ in range(rng.randrange(0, 10))] for _ in range(4)]
        logits = torch.randn(4, V) * 3
        assert torch.allclose(apply_repetition_penalty(logits, histories, 1.7), _naive_penalty(logits, histories, 1.7))


def test_rules_compose_in_order_and_min_length_keeps_eos_out():
    logits = torch.randn(2, V)
    histories = [[1, 2, 1, 2, 1], [3, 3]]
    expected = _naive_ban(_naive_penalty(logits, histories, 1.3), histories, 2)
    expected[0, 5] = float("-inf")  # row 0 has generated 2 tokens of the 3 required; row 1 has 4
    got = apply_rules(logits, histories, [2, 4], repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=3,
                      eos_id=5)
    assert torch.allclose(got, expected)
    assert apply_rules(logits, histories, [0, 0]) is logits


def _gpt():
    torch.manual_seed(0)
    # A peaked random model that, left alone, falls into short loops: the rules have work to do.
    model = build_model("debug", vocab_size=V, init_std=0.02).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(50.0)
    return model


def _naive_rules(scores: torch.Tensor, history: list[int], generated: int, rules, eos_id: int | None) -> torch.Tensor:
    scores = _naive_penalty(scores, [history], rules.repetition_penalty)
    if rules.no_repeat_ngram_size:
        scores = _naive_ban(scores, [history], rules.no_repeat_ngram_size)
    if generated < rules.min_new_tokens and eos_id is not None:
        scores[0, eos_id] = float("-inf")
    return scores


def _naive_generate(model, prompt: list[int], params: SamplingParams, eos_id: int | None) -> list[int]:
    """Greedy decoding with a full forward pass per token and the naive rules."""
    seq, out = list(prompt), []
    with torch.no_grad():
        for _ in range(params.max_new_tokens):
            logits = _naive_rules(model(torch.tensor([seq]))[:, -1].float(), seq, len(out), params, eos_id)
            token = int(logits.argmax())
            if token == eos_id:
                break
            seq.append(token)
            out.append(token)
    return out


PROMPTS = [[1, 2, 3, 1, 2], [4], [7, 7, 8]]


@pytest.mark.parametrize("rules", [dict(no_repeat_ngram_size=2), dict(no_repeat_ngram_size=3, repetition_penalty=1.4),
                                   dict(min_new_tokens=6), dict(no_repeat_ngram_size=1, min_new_tokens=4)])
def test_generate_and_engine_follow_the_rules_like_the_naive_loop(rules):
    model = _gpt()
    params = SamplingParams(temperature=0.0, max_new_tokens=10, **rules)
    eos = 0
    expected = [_naive_generate(model, p, params, eos) for p in PROMPTS]
    assert generate(model, PROMPTS, params, eos_id=eos) == expected
    assert [c.ids for c in Engine(model, max_slots=3, eos_id=eos).generate(PROMPTS, params)] == expected
    n = rules.get("no_repeat_ngram_size")
    for prompt, out in zip(PROMPTS, expected):
        if n:  # no generated token completes an n-gram seen earlier (the prompt may repeat itself)
            grams = _ngrams(prompt + out, n)
            first_new = len(prompt) - n + 1
            assert all(grams[j] not in grams[:j] for j in range(max(first_new, 0), len(grams)))


def test_without_rules_the_peaked_model_loops():
    # The reference point of the test above: greedy decoding alone repeats itself.
    out = generate(_gpt(), [[4]], SamplingParams(temperature=0.0, max_new_tokens=10))[0]
    assert len(set(_ngrams([4] + out, 2))) < len(out)


def _t5():
    torch.manual_seed(0)
    model = T5(preset_config("t5-debug", vocab_size=V)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model


def _naive_seq2seq(model, src, rules: TargetRules, steps: int, eos_id: int) -> list[int]:
    dec, out = [model.config.decoder_start_token_id], []
    with torch.no_grad():
        for _ in range(steps):
            logp = torch.log_softmax(model(src, None, torch.tensor([dec]))[:, -1].float(), -1)
            token = int(_naive_rules(logp, out, len(out), rules, eos_id).argmax())
            if token == eos_id:
                break
            dec.append(token)
            out.append(token)
    return out


@pytest.mark.parametrize("rules", [TargetRules(no_repeat_ngram_size=2), TargetRules(repetition_penalty=1.5),
                                   TargetRules(min_new_tokens=5, no_repeat_ngram_size=3)])
def test_seq2seq_greedy_follows_the_rules_like_the_naive_loop(rules):
    model = _t5()
    src = torch.tensor([[3, 4, 5, 6, 2], [7, 8, 9, 10, 11]])
    got = generate_seq2seq(model, src, 9, eos_id=1, rules=rules)
    assert got == [_naive_seq2seq(model, src[i:i + 1], rules, 9, 1) for i in range(2)]


def test_beam_search_never_repeats_a_banned_ngram_and_keeps_the_minimum_length():
    model = _t5()
    src = torch.tensor([[3, 4, 5, 6, 2], [7, 8, 9, 10, 11]])
    rules = TargetRules(no_repeat_ngram_size=2, min_new_tokens=4)
    for cached in (True, False):
        outs = generate_seq2seq(model, src, 10, eos_id=1, num_beams=3, rules=rules, use_cache=cached)
        for out in outs:
            assert len(out) >= 4 and len(set(_ngrams(out, 2))) == len(_ngrams(out, 2))
    assert generate_seq2seq(model, src, 10, eos_id=1, num_beams=3, rules=rules) == \
        generate_seq2seq(model, src, 10, eos_id=1, num_beams=3, rules=rules, use_cache=False)


@pytest.mark.parametrize("bad", [dict(no_repeat_ngram_size=-1), dict(min_new_tokens=-1),
                                 dict(min_new_tokens=20, max_new_tokens=10)])
def test_bad_rule_values_are_config_errors(bad):
    with pytest.raises(ConfigError):
        SamplingParams(**bad)

"""Batched token scoring against a naive reference that recomputes the whole prefix for every token, and the
engine's scores of the tokens it generates against the same reference."""
import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.infer.engine import Engine
from lmforge.infer.sampling import SamplingParams
from lmforge.infer.scoring import length_batches, score_sequences
from lmforge.models.registry import build_model

SEQUENCES = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [11, 12, 13, 14], [20], list(range(30, 70))]


@pytest.fixture(scope="module", params=["debug", "llama-debug"])
def model(request):
    torch.manual_seed(0)
    return build_model(request.param, init_std=0.2).eval()


def naive_scores(model, ids: list[int], top_k: int = 0) -> list[tuple[float, bool, list[tuple[int, float]]]]:
    """(log-probability, is the most likely token, top-k) of tokens 1.. of `ids`, each from its own full forward
    pass over exactly the tokens before it: no batching, no padding, no shared computation."""
    out = []
    with torch.no_grad():
        for i in range(1, len(ids)):
            logits = model(torch.tensor([ids[:i]]))[0, -1].double()
            logprobs = logits - torch.logsumexp(logits, dim=-1)
            top = torch.topk(logprobs, top_k)
            out.append((float(logprobs[ids[i]]), int(logprobs.argmax()) == ids[i],
                        list(zip(top.indices.tolist(), top.values.tolist()))))
    return out


@pytest.mark.parametrize("max_batch_tokens", [1, 64, 4096])
def test_scores_equal_the_naive_recompute(model, max_batch_tokens):
    got = score_sequences(model, SEQUENCES, top_k=3, max_batch_tokens=max_batch_tokens)
    assert [g.token_ids for g in got] == SEQUENCES
    for seq, scored in zip(SEQUENCES, got):
        assert scored.scores[0] is None and len(scored.scores) == len(seq)
        for s, (logprob, is_top, top) in zip(scored.scores[1:], naive_scores(model, seq, 3)):
            assert s.logprob == pytest.approx(logprob, abs=1e-5)
            assert s.is_top == is_top
            assert [t for t, _ in s.top] == [t for t, _ in top]
            assert [lp for _, lp in s.top] == pytest.approx([lp for _, lp in top], abs=1e-5)


def test_totals_and_greedy_flags(model):
    [scored] = score_sequences(model, [SEQUENCES[0]])
    naive = naive_scores(model, SEQUENCES[0])
    assert scored.total(3) == pytest.approx(sum(lp for lp, _, _ in naive[2:]), abs=1e-5)
    assert scored.all_top(3) == all(top for _, top, _ in naive[2:])


def test_a_sequence_one_token_longer_than_the_context_is_scored(model):
    block = model.config.block_size
    seq = [(7 * i) % 500 + 1 for i in range(block + 1)]
    [scored] = score_sequences(model, [seq])
    assert len(scored.scores) == block + 1
    naive = naive_scores(model, seq)
    assert [s.logprob for s in scored.scores[1:]] == pytest.approx([lp for lp, _, _ in naive], abs=1e-5)


def test_length_batches_respect_the_budget():
    lengths = [5, 40, 3, 40, 12]
    batches = length_batches(lengths, 80)
    assert sorted(i for b in batches for i in b) == list(range(5))
    assert all(max(lengths[i] for i in b) * len(b) <= 80 or len(b) == 1 for b in batches)
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)


@pytest.mark.parametrize("bad, message", [([[]], "empty"), ([[1] * 130], "at most 129"), ([[1, 600]], "outside")])
def test_unscorable_sequences_are_refused(model, bad, message):
    with pytest.raises(ConfigError, match=message):
        score_sequences(model, bad)


def test_encoder_models_are_refused():
    with pytest.raises(ConfigError, match="does not predict"):
        score_sequences(build_model("bert-debug"), [[1, 2, 3]])


def test_engine_scores_of_generated_tokens_equal_the_naive_recompute(model):
    engine = Engine(model, max_slots=3)
    outputs: dict[str, list] = {}
    prompts = [[1, 2, 3], [40, 41, 42, 43, 44], [9]]
    params = [SamplingParams(temperature=0.0, max_new_tokens=6), SamplingParams(temperature=1.0, seed=3,
                                                                              max_new_tokens=6),
              SamplingParams(temperature=0.7, top_k=5, seed=1, max_new_tokens=6)]
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(p, sp, f"r{i}", logprobs=2, callback=lambda out: outputs.setdefault(
            out.request_id, []).append(out))
    while engine.has_unfinished():
        engine.step()
    for i, prompt in enumerate(prompts):
        scores = [s for out in outputs[f"r{i}"] for s in out.new_logprobs]
        generated = [s.token_id for s in scores]
        naive = naive_scores(model, prompt + generated, 2)[len(prompt) - 1:]
        assert len(scores) == 6
        for s, (logprob, is_top, top) in zip(scores, naive):
            assert s.logprob == pytest.approx(logprob, abs=1e-5) and s.is_top == is_top
            assert [t for t, _ in s.top] == [t for t, _ in top]
        if params[i].temperature == 0:
            assert all(s.is_top for s in scores)  # greedy decoding picks the most likely token every time

"""N-gram LM with interpolated modified Kneser-Ney: normalisation, a hand-computed case, a dict-based
reference of Chen & Goodman's formulas, NLTK, save/load, padding and generation."""
import math
from collections import Counter, defaultdict
from fractions import Fraction

import numpy as np
import pytest
import torch

from lmforge.errors import ConfigError, DataError
from lmforge.infer.generate import generate
from lmforge.infer.sampling import SamplingParams
from lmforge.models.ngram import NGramConfig, NGramLM, modified_kn_discounts
from lmforge.models.registry import build_model, load_model, save_model


def _stream(seed=1, V=6, n=700):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, V, n)
    s[::7] = 2  # some structure, so that counts of 1, 2, 3 and more all occur
    s[300:350] = s[10:60]
    return s


def _fit(order, V=6, stream=None, **kw):
    return NGramLM(NGramConfig(vocab_size=V, order=order, **kw)).fit(_stream(V=V) if stream is None else stream)


def reference_kn(stream, order, V, discount=None):
    """Interpolated modified Kneser-Ney with dicts and loops, straight from Chen & Goodman (1998)."""
    stream = [int(t) for t in stream]
    raw = {k: Counter(tuple(stream[i:i + k]) for i in range(len(stream) - k + 1)) for k in range(1, order + 2)}
    counts = {}
    for k in range(1, order + 1):
        if k == order:
            counts[k] = dict(raw[k])
        else:  # continuation count: distinct tokens seen right before the k-gram
            left = defaultdict(set)
            for g in raw[k + 1]:
                left[g[1:]].add(g[0])
            counts[k] = {g: len(left[g]) for g in raw[k]}
    D = {}
    for k in range(1, order + 1):
        nr = Counter(counts[k].values())
        D[k] = [discount] * 3 if discount else list(modified_kn_discounts([nr[1], nr[2], nr[3], nr[4]]))
    total, gamma = defaultdict(float), defaultdict(float)
    for k in range(1, order + 1):
        for g, c in counts[k].items():
            total[g[:-1]] += c
            gamma[g[:-1]] += D[k][min(c, 3) - 1] if c else 0.0

    def prob(w, context):
        context = tuple(context)[max(0, len(context) - order + 1):]
        p = 1.0 / V
        for k in range(1, len(context) + 2):
            h = context[len(context) - k + 1:]
            if total[h] == 0:
                continue
            c = counts[k].get(h + (w,), 0)
            p = (c - (D[k][min(c, 3) - 1] if c else 0.0)) / total[h] + gamma[h] / total[h] * p
        return p

    return prob


def test_discounts_by_hand():
    # n1..n4 = 10, 4, 2, 1: Y = 10/18, D1 = 1 - 2Y(4/10), D2 = 2 - 3Y(2/4), D3+ = 3 - 4Y(1/2).
    np.testing.assert_allclose(modified_kn_discounts(np.array([10, 4, 2, 1])), [5 / 9, 7 / 6, 17 / 9])


def test_probabilities_by_hand():
    # Stream "a b a b a c" (a=0, b=1, c=2; d=3 never occurs), bigrams, one discount D = 1/2.
    # Continuation counts a, b, c = 1 each (total 3), so p1(a) = (1 - 1/2)/3 + (3/2 / 3) / 4 = 7/24, p1(d) = 1/8.
    # Context a: c(ab) = 2, c(ac) = 1, total 3, gamma = (1/2 * 2)/3 = 1/3:
    #   p(b|a) = 3/2/3 + 7/24/3 = 43/72, p(c|a) = 1/2/3 + 7/72 = 19/72.
    # Context b: c(ba) = 2, gamma = 1/2 * 1 / 2: p(a|b) = 3/4 + 7/96 = 79/96. Context c is never followed: p1.
    model = _fit(2, V=4, stream=np.array([0, 1, 0, 1, 0, 2]), discount=0.5)
    got = np.exp(model.log_probs([0, 1, 0, 2, 3]))
    want = [Fraction(7, 24), Fraction(43, 72), Fraction(79, 96), Fraction(19, 72), Fraction(1, 8)]
    np.testing.assert_allclose(got, [float(f) for f in want], rtol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_distributions_sum_to_one(order):
    model = _fit(order, V=7, stream=_stream(V=6))  # token 6 never occurs: still gets probability
    contexts = torch.tensor(np.random.default_rng(0).integers(0, 7, (5, 40)))
    p = model.next_token_log_probs(contexts).exp()
    assert torch.allclose(p.sum(-1), torch.ones(5, 40, dtype=torch.float64), atol=1e-9, rtol=0)
    assert bool((p > 0).all())


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("discount", [None, 0.7])
def test_matches_dict_reference(order, discount):
    stream = _stream()
    model = _fit(order, stream=stream, discount=discount)
    prob = reference_kn(stream, order, 6, discount)
    query = np.random.default_rng(2).integers(0, 6, 200)
    query[100:140] = stream[10:50]  # long seen contexts as well as unseen ones
    want = [math.log(prob(int(query[t]), query[max(0, t - order + 1):t])) for t in range(len(query))]
    np.testing.assert_allclose(model.log_probs(query), want, rtol=0, atol=1e-12)
    # The dense path (every next token at every position) agrees with the per-token path.
    dense = model.next_token_log_probs(torch.tensor(query)[None])[0, :-1]
    np.testing.assert_allclose(dense.gather(-1, torch.tensor(query[1:])[:, None])[:, 0].numpy(),
                               model.log_probs(query)[1:], rtol=0, atol=1e-12)


def test_matches_nltk_kneser_ney():
    nltk_lm = pytest.importorskip("nltk.lm")
    from nltk.util import everygrams

    # NLTK's Kneser-Ney is the single-discount kind, and its lowest order is the continuation unigram
    # without a uniform floor. Both models agree exactly when every token has the same continuation
    # count, which every ordered pair of tokens occurring guarantees; the stream is repeated so that its
    # first n-grams also have a token before them.
    V, order = 5, 3
    rng = np.random.default_rng(0)
    body = [int(t) for t in rng.integers(0, V, 150)] + [t for a in range(V) for b in range(V) for t in (a, b)]
    stream = body + body
    ours = _fit(order, V=V, stream=np.array(stream), discount=0.75)
    words = [chr(97 + t) for t in stream]
    ref = nltk_lm.KneserNeyInterpolated(order, discount=0.75)
    ref.fit([list(everygrams(words, max_len=order))], vocabulary_text=words)
    query = [int(t) for t in rng.integers(0, V, 80)]
    q = [chr(97 + t) for t in query]
    want = [math.log(ref.unmasked_score(q[t], tuple(q[max(0, t - order + 1):t]))) for t in range(len(q))]
    np.testing.assert_allclose(ours.log_probs(query), want, rtol=0, atol=1e-12)


def test_save_load_round_trip(tmp_path):
    model = build_model("ngram-debug", vocab_size=6).fit(_stream())
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config == model.config and loaded.config.table_sizes == model.config.table_sizes
    ids = torch.tensor(_stream(seed=5)[:50])[None]
    torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)
    assert sum(p.numel() for p in loaded.parameters()) == 0


def test_pads_are_never_context():
    model = _fit(4)
    row = torch.tensor([[3, 1, 2, 5, 4]])
    padded = torch.tensor([[2, 2, 3, 1, 2, 5, 4]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(model(padded, attention_mask=mask)[:, 2:], model(row), atol=0, rtol=0)


def test_generation_cached_uncached_and_alone_agree():
    model = _fit(3, V=6).eval()
    prompts = [[1, 2, 3, 4], [2], [5, 0, 1]]
    params = SamplingParams(temperature=0.0, max_new_tokens=10)
    cached = generate(model, prompts, params)
    assert cached == generate(model, prompts, params, use_cache=False)
    for prompt, row in zip(prompts, cached):
        assert generate(model, [prompt], params) == [row]
    sampled = generate(model, prompts, SamplingParams(temperature=1.0, seed=0, max_new_tokens=10))
    assert all(len(row) == 10 for row in sampled)


def test_bad_input():
    with pytest.raises(ConfigError, match="no counts"):
        NGramLM(NGramConfig(vocab_size=6, order=3))(torch.tensor([[1, 2]]))
    with pytest.raises(DataError, match="token ids"):
        NGramLM(NGramConfig(vocab_size=4, order=2)).fit(np.array([1, 2, 7]))
    with pytest.raises(DataError, match="at least 3 tokens"):
        NGramLM(NGramConfig(vocab_size=4, order=3)).fit(np.array([1, 2]))
    with pytest.raises(ConfigError, match="model.discount"):
        NGramConfig(discount=1.5)
    with pytest.raises(ConfigError, match="model.order"):
        NGramConfig(order=0)

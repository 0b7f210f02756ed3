"""Encoder-decoder decoding against references: greedy against an argmax loop over full forward passes,
beam search against exhaustive search over every possible output, cached against uncached, batched
against one row at a time."""
import itertools

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.infer.seq2seq import generate_seq2seq
from lmforge.models.registry import build_model, preset_config
from lmforge.models.t5 import T5


def _model(vocab=40, **overrides) -> T5:
    torch.manual_seed(0)
    model = T5(preset_config("t5-debug", vocab_size=vocab, **overrides)).eval()
    with torch.no_grad():  # sharper distributions than the init's, so greedy and beam paths differ
        model.lm_head.weight.mul_(3.0)
    return model


def _argmax_loop(model, src, mask, steps):
    dec = torch.full((src.shape[0], 1), model.config.decoder_start_token_id)
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(src, mask, dec)[:, -1].argmax(-1, keepdim=True)
            dec = torch.cat([dec, nxt], dim=1)
    return dec[:, 1:].tolist()


@pytest.mark.parametrize("variant", [{}, dict(position="sinusoidal", norm_position="post", norm="layernorm",
                                               bias=True, scaled_attention=True, scale_embeddings=True)])
def test_greedy_matches_argmax_over_full_forward(variant):
    model = _model(**variant)
    src = torch.randint(0, 40, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[2, 6:] = 0
    ref = _argmax_loop(model, src, mask, 8)
    assert generate_seq2seq(model, src, 8, attention_mask=mask) == ref
    assert generate_seq2seq(model, src, 8, attention_mask=mask, use_cache=False) == ref


def test_greedy_stops_at_eos():
    model = _model()
    src = torch.randint(0, 40, (2, 7))
    ref = _argmax_loop(model, src, None, 6)
    eos = ref[0][2]
    out = generate_seq2seq(model, src, 6, eos_id=eos)
    assert out[0] == ref[0][:ref[0].index(eos)]
    assert out[1] == (ref[1][:ref[1].index(eos)] if eos in ref[1] else ref[1])


def _log_probs_of(model, src, sequences) -> torch.Tensor:
    """Total log-probability of each candidate output, all scored in one teacher-forced forward pass."""
    L = max(map(len, sequences))
    start = model.config.decoder_start_token_id
    dec = torch.tensor([[start, *c[:-1]] + [0] * (L - len(c)) for c in sequences])
    target = torch.tensor([c + [0] * (L - len(c)) for c in sequences])
    real = torch.tensor([[1.0] * len(c) + [0.0] * (L - len(c)) for c in sequences])
    with torch.no_grad():
        logp = torch.log_softmax(model(src.expand(len(sequences), -1), None, dec).float(), -1)
    return (logp.gather(-1, target[..., None])[..., 0] * real).sum(-1)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_equals_exhaustive_search(length_penalty):
    # 6 tokens, 3 steps: 36 beams keep every prefix alive, so beam search must find the best output.
    V, L, eos = 6, 3, 5
    model = _model(vocab=V, pad_token_id=0)
    with torch.no_grad():  # flat distributions, where the best output is often not the greedy one
        model.lm_head.weight.mul_(0.1)
    candidates = [list(p) + [eos] for n in range(L) for p in itertools.product(range(V - 1), repeat=n)]
    candidates += [list(p) for p in itertools.product(range(V - 1), repeat=L)]  # cut off by the step limit
    lengths = torch.tensor([len(c) for c in candidates], dtype=torch.float)
    beats_greedy = 0
    for seed in range(10):
        src = torch.randint(0, V, (1, 8), generator=torch.Generator().manual_seed(seed))
        scores = _log_probs_of(model, src, candidates) / lengths ** length_penalty
        best = candidates[int(scores.argmax())]
        expected = best[:-1] if best[-1] == eos else best
        assert generate_seq2seq(model, src, L, eos_id=eos, num_beams=36, length_penalty=length_penalty) == [expected]
        beats_greedy += generate_seq2seq(model, src, L, eos_id=eos) != [expected]
    assert beats_greedy > 0  # the search is tested where it matters


def test_beam_search_cached_batched_and_single_agree():
    model = _model()
    src = torch.randint(1, 40, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 7:] = 0
    batched = generate_seq2seq(model, src, 7, attention_mask=mask, eos_id=3, num_beams=4)
    assert batched == generate_seq2seq(model, src, 7, attention_mask=mask, eos_id=3, num_beams=4, use_cache=False)
    for i in range(3):
        n = int(mask[i].sum())
        assert generate_seq2seq(model, src[i:i + 1, :n], 7, eos_id=3, num_beams=4) == [batched[i]]
    assert generate_seq2seq(model, src, 7, eos_id=3, num_beams=1) == generate_seq2seq(model, src, 7, eos_id=3)


def test_bad_arguments():
    model = _model()
    src = torch.randint(0, 40, (1, 5))
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate_seq2seq(model, src, 0)
    with pytest.raises(ConfigError, match="num_beams"):
        generate_seq2seq(model, src, 4, num_beams=0)
    with pytest.raises(ConfigError, match="not an encoder-decoder"):
        generate_seq2seq(build_model("debug"), src, 4)

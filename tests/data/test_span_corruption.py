"""T5 span corruption against the reference algorithm (HF's port of T5's `random_spans_noise_mask`),
hand-worked examples, statistics over many draws and an independent reconstruction of the text; the
loader's determinism, rank slicing and exact resume; tokenizer sentinels."""
import numpy as np
import pytest
import torch

from lmforge.data.collate import IGNORE_INDEX
from lmforge.data.span_corruption import (SpanCorruptionLoader, corrupt_spans, iter_span_corruption_eval_batches,
                                          random_spans_noise_mask, sentinel_ids, span_corruption_lengths)
from lmforge.data.tokenizers import Tokenizer, check_tokenizer_args, train_tokenizer
from lmforge.errors import ConfigError, DataError

TEXTS = ["the quick brown fox jumps over the lazy dog " * 5, "a journey of a thousand miles begins with one step",
         "to be or not to be that is the question " * 3] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer("char", TEXTS, 0, extra_ids=20)


def reference_noise_mask(length, noise_density, mean_noise_span_length, rng):
    """HF examples/flax/language-modeling/run_t5_mlm_flax.py (after T5's t5.data.preprocessors),
    with its global np.random calls routed to `rng`."""
    orig_length = length
    num_noise_tokens = int(np.round(length * noise_density))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = int(np.round(num_noise_tokens / mean_noise_span_length))
    num_noise_spans = max(num_noise_spans, 1)
    num_nonnoise_tokens = length - num_noise_tokens

    def _random_segmentation(num_items, num_segments):
        mask_indices = np.arange(num_items - 1) < (num_segments - 1)
        rng.shuffle(mask_indices)
        first_in_segment = np.pad(mask_indices, [[1, 0]])
        segment_id = np.cumsum(first_in_segment)
        _, segment_length = np.unique(segment_id, return_counts=True)
        return segment_length

    noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans)
    nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans)
    interleaved_span_lengths = np.reshape(np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1),
                                          [num_noise_spans * 2])
    span_starts = np.cumsum(interleaved_span_lengths)[:-1]
    span_start_indicator = np.zeros((length,), dtype=np.int8)
    span_start_indicator[span_starts] = True
    span_num = np.cumsum(span_start_indicator)
    is_noise = np.equal(span_num % 2, 1)
    return is_noise[:orig_length]


@pytest.mark.parametrize("length", [10, 57, 141, 568])
def test_noise_mask_matches_t5_reference(length):
    for seed in range(20):
        ours = random_spans_noise_mask(length, np.random.default_rng(seed))
        ref = reference_noise_mask(length, 0.15, 3.0, np.random.default_rng(seed))
        np.testing.assert_array_equal(ours, ref)


def _spans(mask):
    padded = np.r_[False, mask, False].astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return edges[1::2] - edges[::2]  # lengths of the runs of True


def test_noise_statistics_over_many_draws():
    rng = np.random.default_rng(0)
    lengths = rng.integers(60, 400, size=1000)
    masks = [random_spans_noise_mask(int(n), rng) for n in lengths]
    density = sum(m.sum() for m in masks) / sum(len(m) for m in masks)
    spans = np.concatenate([_spans(m) for m in masks])
    assert abs(density - 0.15) < 0.002
    assert abs(spans.mean() - 3.0) < 0.1
    assert spans.min() >= 1 and spans.max() > 6  # span lengths vary, not all exactly 3
    assert not any(m[0] for m in masks) and all(m[-1] for m in masks)
    # Away from the ends, every position is about equally likely to be noise.
    hits = np.zeros(100)
    for _ in range(3000):
        hits += random_spans_noise_mask(100, rng)
    assert 0.11 < hits[10:90].min() / 3000 and hits[10:90].max() / 3000 < 0.19


def test_corrupt_spans_by_hand():
    tokens = np.array([10, 11, 12, 13, 14, 15])  # a b c d e f
    noise = np.array([0, 0, 1, 1, 0, 1], dtype=bool)
    inputs, targets = corrupt_spans(tokens, noise, np.array([99, 98, 97]), eos_id=1)
    assert inputs.tolist() == [10, 11, 99, 14, 98, 1]
    assert targets.tolist() == [99, 12, 13, 98, 15, 1]


def reconstruct(inputs, targets, sentinels, eos):
    """Put each target span back in place of its sentinel, walking both sequences."""
    sentinels = list(sentinels)
    spans, current = {}, None
    for t in targets:
        if t == eos:
            break
        if t in sentinels:
            current = sentinels.index(t)
            spans[current] = []
        else:
            spans[current].append(t)
    out = []
    for t in inputs:
        if t == eos:
            break
        out.extend(spans[sentinels.index(t)] if t in sentinels else [t])
    return out


def test_sentinels_in_order_and_text_reconstructs_exactly(tokenizer):
    sentinels = sentinel_ids(tokenizer)
    ids = np.array(tokenizer.encode(" ".join(TEXTS)))
    rng = np.random.default_rng(3)
    for start in range(0, len(ids) - 200, 97):
        window = ids[start:start + 200]
        noise = random_spans_noise_mask(200, rng)
        inputs, targets = corrupt_spans(window, noise, sentinels, tokenizer.eos_id)
        k = len(_spans(noise))
        assert [t for t in inputs if t in sentinels] == sentinels[:k].tolist()
        assert [t for t in targets if t in sentinels] == sentinels[:k].tolist()
        assert inputs[-1] == targets[-1] == tokenizer.eos_id
        assert reconstruct(inputs.tolist(), targets.tolist(), sentinels, tokenizer.eos_id) == window.tolist()


def test_lengths_match_t5():
    # T5's compute_input_and_target_lengths(512, 0.15, 3) = (568, 114).
    assert span_corruption_lengths(512) == (568, 114)
    for seq_len in (16, 64, 128, 300):
        raw, target = span_corruption_lengths(seq_len)
        inputs, targets = corrupt_spans(np.arange(raw) + 50, random_spans_noise_mask(raw, np.random.default_rng(0)),
                                        np.arange(40, 0, -1), eos_id=0)
        assert len(inputs) <= seq_len and len(targets) == target


def test_sentinel_tokens_in_the_tokenizer(tmp_path):
    tok = train_tokenizer("unigram", TEXTS, 80, extra_ids=10)
    assert tok.vocab_size <= 80
    ids = sentinel_ids(tok)
    assert len(ids) == 10
    assert ids[0] == tok.vocab_size - 1 and ids.tolist() == list(range(tok.vocab_size - 1, tok.vocab_size - 11, -1))
    assert tok.encode("<extra_id_3>") == [ids[3]]  # one token, never split
    tok.save(tmp_path)
    assert sentinel_ids(Tokenizer.load(tmp_path)).tolist() == ids.tolist()
    with pytest.raises(ConfigError, match="extra_ids"):
        check_tokenizer_args("unigram", 100, extra_ids=-1)
    with pytest.raises(ConfigError, match="vocab_size 20 is out of range"):
        check_tokenizer_args("unigram", 20, extra_ids=20)


def test_tokenizer_without_sentinels_is_a_config_error():
    plain = train_tokenizer("char", TEXTS, 0)
    with pytest.raises(ConfigError, match="no sentinel tokens"):
        SpanCorruptionLoader(np.arange(500) % 20, 32, 2, tokenizer=plain)


def _tokens(tokenizer):
    return np.array(tokenizer.encode(" ".join(TEXTS) * 3), dtype=np.uint16)


def test_loader_batches(tokenizer):
    tokens = _tokens(tokenizer)
    loader = SpanCorruptionLoader(tokens, 48, 4, tokenizer=tokenizer, seed=5)
    batch = loader.next_batch()
    raw, target_len = span_corruption_lengths(48)
    B, S = batch["input_ids"].shape
    assert B == 4 and S <= 48 and batch["attention_mask"].all()
    assert batch["labels"].shape == (4, target_len) and (batch["labels"] != IGNORE_INDEX).all()
    start = tokenizer.pad_id
    assert (batch["decoder_input_ids"][:, 0] == start).all()
    assert torch.equal(batch["decoder_input_ids"][:, 1:], batch["labels"][:, :-1])
    sentinels = sentinel_ids(tokenizer)
    for inp, lab in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        text = reconstruct(inp, lab, sentinels, tokenizer.eos_id)
        assert len(text) == raw
        # The reconstructed window is a real stretch of the corpus.
        hits = np.flatnonzero(tokens[:len(tokens) - raw + 1] == text[0])
        assert any(tokens[h:h + raw].tolist() == text for h in hits)
    assert not torch.equal(loader.next_batch()["input_ids"], batch["input_ids"])


def test_loader_resumes_exactly_and_slices_ranks(tokenizer):
    tokens = _tokens(tokenizer)
    a = SpanCorruptionLoader(tokens, 40, 3, tokenizer=tokenizer, seed=7)
    for _ in range(3):
        a.next_batch()
    b = SpanCorruptionLoader(tokens, 40, 3, tokenizer=tokenizer, seed=7)
    b.load_state_dict(a.state_dict())
    for _ in range(2):
        x, y = a.next_batch(), b.next_batch()
        assert all(torch.equal(x[k], y[k]) for k in x)

    whole = SpanCorruptionLoader(tokens, 40, 4, tokenizer=tokenizer, seed=7, world_size=1)
    ranks = [SpanCorruptionLoader(tokens, 40, 2, tokenizer=tokenizer, seed=7, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(2):
        full, parts = whole.next_batch(), [r.next_batch() for r in ranks]
        for k in full:
            assert torch.equal(full[k], torch.cat([p[k] for p in parts]))


def test_eval_batches_are_fixed(tokenizer):
    tokens = _tokens(tokenizer)
    first = list(iter_span_corruption_eval_batches(tokens, 40, 3, tokenizer=tokenizer, max_batches=2))
    again = list(iter_span_corruption_eval_batches(tokens, 40, 3, tokenizer=tokenizer, max_batches=2))
    assert len(first) == 2 and all(torch.equal(x[k], y[k]) for x, y in zip(first, again) for k in x)
    every = list(iter_span_corruption_eval_batches(tokens, 40, 3, tokenizer=tokenizer, max_batches=None))
    raw, _ = span_corruption_lengths(40)
    assert sum(len(b["input_ids"]) for b in every) == len(tokens) // raw
    with pytest.raises(DataError, match="fewer than"):
        list(iter_span_corruption_eval_batches(tokens[:raw - 1], 40, 3, tokenizer=tokenizer, max_batches=1))

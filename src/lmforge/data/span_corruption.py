"""T5's span corruption of a flat token stream into encoder-decoder examples.

Every random choice comes from a numpy Generator passed in, so an example is a pure function of
its seed.
"""
from __future__ import annotations

import numpy as np
import torch

from lmforge.data.collate import collate_seq2seq
from lmforge.data.loaders import LMWindowLoader, eval_generators
from lmforge.data.tokenizers import sentinel_token
from lmforge.errors import ConfigError, DataError


def random_spans_noise_mask(length: int, rng: np.random.Generator, *, noise_density: float = 0.15,
                            mean_span_length: float = 3.0) -> np.ndarray:
    """Which of ``length`` positions are noise (bool), as T5's ``random_spans_noise_mask``.

    ``round(length * noise_density)`` noise tokens (at least 1, at most length - 1) fall into
    ``round(noise / mean_span_length)`` spans (at least 1). Noise and non-noise tokens are each cut
    into that many non-empty runs at uniformly random places, and the runs alternate starting with
    non-noise, so a sequence never begins with noise and always ends with it.
    """
    if length < 2:
        raise ConfigError(f"span corruption needs sequences of at least 2 tokens, got {length}",
                          "use a longer --train.seq_len")
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_span_length)), 1)
    num_spans = min(num_spans, num_noise, length - num_noise)

    def segment_lengths(n_items: int) -> np.ndarray:
        # A random composition of n_items into num_spans positive parts: choose num_spans - 1 cut points.
        cuts = np.arange(n_items - 1) < num_spans - 1
        rng.shuffle(cuts)
        segment = np.cumsum(np.r_[False, cuts])
        return np.bincount(segment, minlength=num_spans)

    noise_lengths = segment_lengths(num_noise)
    keep_lengths = segment_lengths(length - num_noise)
    runs = np.stack([keep_lengths, noise_lengths], axis=1).reshape(-1)  # keep, noise, keep, noise, ...
    return np.repeat(np.arange(len(runs)) % 2 == 1, runs)


def span_corruption_lengths(inputs_length: int, *, noise_density: float = 0.15,
                            mean_span_length: float = 3.0) -> tuple[int, int]:
    """(raw tokens to corrupt, target length) so that the corrupted input fills ``inputs_length``.

    T5's ``compute_input_and_target_lengths``: the longest raw window whose input (kept tokens, one
    sentinel per span, eos) fits; the target holds the noise tokens, one sentinel per span and eos.
    """
    def lengths(raw: int) -> tuple[int, int]:
        noise = int(round(raw * noise_density))
        spans = int(round(noise / mean_span_length))
        return raw - noise + spans + 1, noise + spans + 1

    raw = inputs_length
    while lengths(raw + 1)[0] <= inputs_length:
        raw += 1
    return raw, lengths(raw)[1]


def sentinel_ids(tokenizer) -> np.ndarray:
    """Ids of ``<extra_id_0>``, ``<extra_id_1>``, ... in order; a one-line ConfigError when there are none."""
    ids = []
    while (i := tokenizer.token_to_id(sentinel_token(len(ids)))) is not None:
        ids.append(i)
    if not ids:
        raise ConfigError(f"the {tokenizer.kind} tokenizer has no sentinel tokens (<extra_id_0>, ...), which span "
                          "corruption needs", "let pretrain prepare the raw text, or prepare it with --extra_ids 100")
    return np.asarray(ids, dtype=np.int64)


def corrupt_spans(tokens: np.ndarray, noise_mask: np.ndarray, sentinels: np.ndarray,
                  eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """T5 span corruption of one sequence: ``(inputs, targets)``.

    Each noise span is replaced in the input by the next sentinel; the target lists every span
    behind its sentinel. Both end with ``eos_id``: ``a b c d e f`` with noise ``c d`` and ``f``
    gives ``a b <0> e <1> </s>`` and ``<0> c d <1> f </s>``.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    starts = noise_mask & ~np.r_[False, noise_mask[:-1]]  # first token of each noise span
    n_spans = int(starts.sum())
    if n_spans > len(sentinels):
        raise ConfigError(f"span corruption made {n_spans} spans but the tokenizer has {len(sentinels)} sentinels",
                          "use a shorter --train.seq_len or a tokenizer with more extra ids")
    span = np.cumsum(starts) - 1
    inputs = np.where(starts, sentinels[span], tokens)[~noise_mask | starts]
    targets = np.insert(tokens[noise_mask], np.flatnonzero(starts[noise_mask]), sentinels[:n_spans])
    return np.r_[inputs, eos_id], np.r_[targets, eos_id]


class SpanCorruptionCollator:
    """T5 span corruption of raw token windows: ``batch(windows, rngs)`` -> encoder-decoder batch.

    The decoder starts from the tokenizer's pad token, as T5's does; the model's
    ``decoder_start_token_id`` must be the same id.
    """

    def __init__(self, tokenizer, *, noise_density: float = 0.15, mean_span_length: float = 3.0):
        if not 0.0 < noise_density < 0.5:
            raise ConfigError(f"noise_density must be in (0, 0.5), got {noise_density}", "use e.g. 0.15 as T5 does")
        if mean_span_length < 1.0:
            raise ConfigError(f"mean_span_length must be >= 1, got {mean_span_length}", "use e.g. 3 as T5 does")
        self.sentinels = sentinel_ids(tokenizer)
        self.eos_id, self.pad_id = tokenizer.eos_id, tokenizer.pad_id
        self.noise_density, self.mean_span_length = noise_density, mean_span_length

    def example(self, window: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        noise = random_spans_noise_mask(len(window), rng, noise_density=self.noise_density,
                                        mean_span_length=self.mean_span_length)
        return corrupt_spans(window, noise, self.sentinels, self.eos_id)

    def batch(self, windows, rngs) -> dict[str, torch.Tensor]:
        pairs = [self.example(np.asarray(w, dtype=np.int64), r) for w, r in zip(windows, rngs)]
        return collate_seq2seq(pairs, pad_id=self.pad_id, decoder_start_id=self.pad_id)


def _span_corruption_window(tokens: np.ndarray, seq_len: int, noise_density: float,
                            mean_span_length: float) -> int:
    raw, _ = span_corruption_lengths(seq_len, noise_density=noise_density, mean_span_length=mean_span_length)
    if len(tokens) < raw:
        raise DataError(f"dataset has {len(tokens)} tokens, fewer than the {raw} that one span-corruption "
                        f"example of {seq_len} input tokens needs", "use more data or a smaller --train.seq_len")
    return raw


class SpanCorruptionLoader(LMWindowLoader):
    """Resumable, rank-sliced T5 span-corruption batches from a flat token stream.

    Each example corrupts a random window of raw tokens sized so that its input is at most
    ``seq_len`` tokens (:func:`span_corruption_lengths`); every example of a batch has the same
    input and target lengths. Example ``j`` of the global batch at step ``k`` comes from
    ``np.random.default_rng([seed, k, j])`` and rank ``r`` keeps rows ``r * B`` to ``(r + 1) * B``:
    the batch depends only on ``(seed, step)`` and resuming from ``state_dict()`` is exact.
    Batches hold ``input_ids``, ``attention_mask``, ``decoder_input_ids`` and ``labels``.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, *, tokenizer,
                 noise_density: float = 0.15, mean_span_length: float = 3.0, seed: int = 1337, rank: int = 0,
                 world_size: int = 1):
        self.corruption = SpanCorruptionCollator(tokenizer, noise_density=noise_density, mean_span_length=mean_span_length)
        raw = _span_corruption_window(tokens, seq_len, noise_density, mean_span_length)
        # The parent checks the arguments and keeps the cursor; its windows are the raw ones plus one.
        super().__init__(tokens, raw - 1, batch_size, seed=seed, rank=rank, world_size=world_size)
        self.raw_length = raw

    def next_batch(self) -> dict[str, torch.Tensor]:
        rngs = self.row_generators()
        starts = [int(r.integers(0, len(self.tokens) - self.raw_length + 1)) for r in rngs]
        self.step += 1
        return self.corruption.batch([self.tokens[s:s + self.raw_length] for s in starts], rngs)


def iter_span_corruption_eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int, *, tokenizer,
                                      noise_density: float = 0.15, mean_span_length: float = 3.0,
                                      max_batches: int | None = None, seed: int = 0):
    """A fixed validation set: non-overlapping raw windows spread evenly over ``tokens`` (all of them
    without ``max_batches``), window ``j`` corrupted with ``default_rng([seed, j])``."""
    corruption = SpanCorruptionCollator(tokenizer, noise_density=noise_density, mean_span_length=mean_span_length)
    raw = _span_corruption_window(tokens, seq_len, noise_density, mean_span_length)
    n_windows = len(tokens) // raw
    k = n_windows if max_batches is None else min(n_windows, max_batches * batch_size)
    starts = (np.arange(k) * n_windows // k) * raw
    for i in range(0, k, batch_size):
        chunk = starts[i:i + batch_size]
        yield corruption.batch([tokens[s:s + raw] for s in chunk],
                               eval_generators(seed, i, len(chunk)))

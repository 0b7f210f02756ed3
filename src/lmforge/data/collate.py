"""Turning token sequences into training examples.

Masked-language-model inputs (BERT's 80/10/10 rule, optionally whole words at a time) and the
sentence pairs of next-sentence prediction (NSP, BERT) and sentence-order prediction (SOP, ALBERT),
cut from a flat token stream whose documents are separated by the tokenizer's end-of-text token;
T5's span corruption of the same stream, and padded encoder-decoder batches of given pairs.
Every random choice comes from a numpy Generator passed in, so an example is a pure function of
its seed.
"""
from __future__ import annotations

import numpy as np
import torch

from lmforge.data.loaders import LMWindowLoader
from lmforge.data.text import is_cjk
from lmforge.data.tokenizers import sentinel_token
from lmforge.errors import ConfigError, DataError


IGNORE_INDEX = -100
PAIR_TASKS = ("nsp", "sop")


# ---------------------------------------------------------------- masked language modelling
def _word_char(ch: str) -> bool:
    return (ch.isalnum() or ch == "_") and not is_cjk(ch)


def word_tables(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Two bool tables over the vocabulary that say where words continue across tokens.

    Token i belongs to the same word as token i-1 when ``continues[ids[i]] and extendable[ids[i-1]]``.
    WordPiece marks continuations with ``##``, Unigram marks word starts with ``▁``, byte-level BPE
    with ``Ġ``; for characters a word is a run of letters, digits and underscores. A CJK character
    is always a word of its own, and special tokens never join anything.
    """
    vocab = tokenizer.vocab_size
    specials = set(special_ids(tokenizer))
    continues = np.zeros(vocab, dtype=bool)
    extendable = np.zeros(vocab, dtype=bool)
    for i in range(vocab):
        tok = tokenizer.id_to_token(i)
        if i in specials or not tok:
            continue
        if tokenizer.kind == "wordpiece":
            continues[i] = tok.startswith("##") and len(tok) > 2 and not is_cjk(tok[2])
            extendable[i] = not is_cjk(tok[-1])
        elif tokenizer.kind == "char":
            continues[i] = extendable[i] = len(tok) == 1 and _word_char(tok)
        elif tokenizer.kind == "unigram":
            continues[i] = not tok.startswith("▁") and not is_cjk(tok[0])
            extendable[i] = not is_cjk(tok[-1])
        else:  # byte-level BPE: bytes of non-ASCII characters are never treated as word pieces
            continues[i] = tok[0].isascii() and _word_char(tok[0])
            extendable[i] = tok[-1].isascii() and _word_char(tok[-1])
    return continues, extendable


def special_ids(tokenizer) -> list[int]:
    ids = {tokenizer.token_to_id(t) for t in tokenizer.special_tokens} | {tokenizer.pad_id, tokenizer.eos_id}
    return sorted(i for i in ids if i is not None)


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, *, maskable: np.ndarray, mask_id: int,
                random_ids: np.ndarray, mask_prob: float = 0.15,
                word_starts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking of one sequence ``ids`` (T,): returns ``(inputs, labels)``.

    ``round(mask_prob * n)`` of the ``n`` maskable positions are chosen (at least one); each chosen
    position becomes ``mask_id`` with probability 0.8, a token drawn from ``random_ids`` with 0.1,
    and stays as it is with 0.1. ``labels`` hold the original id there and IGNORE_INDEX elsewhere.
    With ``word_starts`` (True where a new word begins), whole words are chosen until the budget
    is met; a word that would overshoot it is skipped, as in BERT's reference implementation.
    """
    ids, maskable = np.asarray(ids), np.asarray(maskable, dtype=bool)
    positions = np.flatnonzero(maskable)
    inputs, labels = ids.copy(), np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    if len(positions) == 0:
        return inputs, labels
    budget = max(1, int(round(mask_prob * len(positions))))
    if word_starts is None:
        chosen = rng.permutation(positions)[:budget]
    else:
        # A word is a maximal run of maskable positions without a word start inside it.
        starts = np.asarray(word_starts, dtype=bool) | ~np.r_[False, maskable[:-1]]
        word_of = np.cumsum(starts[positions]) - 1  # (n,) word index of each maskable position
        bounds = np.flatnonzero(np.r_[True, word_of[1:] != word_of[:-1], True])
        picked, total = [], 0
        for w in rng.permutation(len(bounds) - 1):
            size = bounds[w + 1] - bounds[w]
            if total + size > budget:
                continue
            picked.append(positions[bounds[w]:bounds[w + 1]])
            total += size
            if total == budget:
                break
        if not picked:  # every word is longer than the budget: mask one whole word rather than none
            w = int(rng.integers(0, len(bounds) - 1))
            picked.append(positions[bounds[w]:bounds[w + 1]])
        chosen = np.concatenate(picked)
    labels[chosen] = ids[chosen]
    u = rng.random(len(chosen))
    to_mask, to_random = chosen[u < 0.8], chosen[(u >= 0.8) & (u < 0.9)]
    inputs[to_mask] = mask_id
    inputs[to_random] = random_ids[rng.integers(0, len(random_ids), size=len(to_random))]
    return inputs, labels


class MLMCollator:
    """Masks sequences of a tokenizer's ids: ``collator(ids, rng) -> (inputs, labels)``.

    Special tokens ([CLS], [SEP], [PAD], ...) are never chosen and never drawn as random
    replacements. ``whole_word`` masks every piece of a word together (see :func:`word_tables`).
    """

    def __init__(self, tokenizer, *, mask_prob: float = 0.15, whole_word: bool = False):
        if not 0.0 < mask_prob < 1.0:
            raise ConfigError(f"mask_prob must be in (0, 1), got {mask_prob}", "use e.g. 0.15 as BERT does")
        self.mask_id = require_tokens(tokenizer, "[MASK]")["[MASK]"]
        self.mask_prob = mask_prob
        self.special = np.zeros(tokenizer.vocab_size, dtype=bool)
        self.special[special_ids(tokenizer)] = True
        self.random_ids = np.flatnonzero(~self.special)
        self.tables = word_tables(tokenizer) if whole_word else None

    def word_starts(self, ids: np.ndarray) -> np.ndarray:
        continues, extendable = self.tables
        starts = np.ones(len(ids), dtype=bool)
        starts[1:] = ~(continues[ids[1:]] & extendable[ids[:-1]])
        return starts

    def __call__(self, ids: np.ndarray, rng: np.random.Generator,
                 maskable: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mask ``ids`` (T,) or (B, T); ``maskable`` can exclude more positions (padding is special anyway)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim == 2:
            rows = [self(row, rng, None if maskable is None else maskable[i]) for i, row in enumerate(ids)]
            return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
        ok = ~self.special[ids] if maskable is None else (~self.special[ids] & maskable)
        starts = self.word_starts(ids) if self.tables is not None else None
        return mask_tokens(ids, rng, maskable=ok, mask_id=self.mask_id, random_ids=self.random_ids,
                           mask_prob=self.mask_prob, word_starts=starts)


def require_tokens(tokenizer, *tokens: str) -> dict[str, int]:
    """Ids of ``tokens``; a one-line ConfigError naming the missing ones otherwise."""
    ids = {t: tokenizer.token_to_id(t) for t in tokens}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise ConfigError(f"the {tokenizer.kind} tokenizer has no {', '.join(missing)} token, which masked-LM "
                          "training needs", "prepare the data with --data.tokenizer wordpiece")
    return ids


# ---------------------------------------------------------------- BERT pretraining examples
class PretrainingExamples:
    """BERT pretraining examples of ``seq_len`` tokens from a flat token stream.

    ``pairs=None``: ``[CLS] window [SEP]`` over any ``seq_len - 2`` consecutive tokens (documents
    run into each other, separated by their end-of-text token, as in RoBERTa).
    ``pairs="nsp"``: ``[CLS] A [SEP] B [SEP]`` inside one document, A of random length; half the
    time B is A's continuation (pair label 0), half the time tokens from another place in the
    corpus, another document when there is one (label 1). ``pairs="sop"``: A and B always
    consecutive, swapped half the time (label 1). Pairs fill ``seq_len`` when the document is long
    enough and are right-padded otherwise.

    Each example is built from an *anchor*, a position in the corpus, and a Generator; training
    draws anchors at random, evaluation spreads them evenly.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, tokenizer, *, pairs: str | None = None,
                 mask_prob: float = 0.15, whole_word: bool = False):
        if pairs not in (None, *PAIR_TASKS):
            raise ConfigError(f"unknown sentence-pair task {pairs!r}", f"use one of {', '.join(PAIR_TASKS)}")
        ids = require_tokens(tokenizer, "[CLS]", "[SEP]", "[MASK]")
        self.cls_id, self.sep_id = ids["[CLS]"], ids["[SEP]"]
        self.pad_id = tokenizer.pad_id
        self.tokens, self.seq_len, self.pairs = tokens, int(seq_len), pairs
        self.collator = MLMCollator(tokenizer, mask_prob=mask_prob, whole_word=whole_word)
        special_count = 3 if pairs else 2
        if self.seq_len < special_count + 2:
            raise ConfigError(f"train.seq_len ({seq_len}) leaves no room for text between the special tokens",
                              "use --train.seq_len 16 or more")
        self.span = self.seq_len - special_count  # text tokens per example
        if pairs is None:
            if len(tokens) < self.span:
                raise DataError(f"dataset has {len(tokens)} tokens, fewer than one sequence of {self.span}",
                                "use more data or a smaller --train.seq_len")
            self.n_positions = len(tokens) - self.span + 1  # window starts
            self.n_spans = len(tokens) // self.span
            return
        # Documents: runs between end-of-text tokens; those of one token cannot be split into A and B.
        eos = np.flatnonzero(np.asarray(tokens) == tokenizer.eos_id)
        starts, ends = np.r_[0, eos + 1], np.r_[eos, len(tokens)]
        keep = ends - starts >= 2
        self.doc_start, self.doc_len = starts[keep], (ends - starts)[keep]
        if len(self.doc_len) == 0:
            raise DataError("no document has the 2 tokens a sentence pair needs", "use more data")
        self.doc_offset = np.r_[0, np.cumsum(self.doc_len)]  # anchor coordinates: documents back to back
        self.n_positions = int(self.doc_offset[-1])
        self.n_spans = max(1, self.n_positions // self.span)

    # -- anchors
    def random_anchor(self, rng: np.random.Generator) -> int:
        return int(rng.integers(0, self.n_positions))

    def eval_anchors(self, n: int | None) -> np.ndarray:
        """Evenly spread anchors: every non-overlapping span once (n=None), or n spread over the split."""
        if n is None or n >= self.n_spans:
            return np.arange(self.n_spans) * self.span
        return (np.arange(n) * self.n_spans // n) * self.span

    def _doc_tokens(self, doc: int, start: int, length: int) -> np.ndarray:
        """Up to ``length`` tokens of document ``doc`` from ``start``, never past its end."""
        begin = int(self.doc_start[doc]) + start
        end = min(begin + length, int(self.doc_start[doc] + self.doc_len[doc]))
        return np.asarray(self.tokens[begin:end], dtype=np.int64)

    def _locate(self, position: int) -> tuple[int, int]:
        doc = int(np.searchsorted(self.doc_offset, position, side="right") - 1)
        return doc, position - int(self.doc_offset[doc])

    # -- one example
    def example(self, anchor: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        T = self.seq_len
        if self.pairs is None:
            text = np.asarray(self.tokens[anchor:anchor + self.span], dtype=np.int64)
            ids = np.r_[self.cls_id, text, self.sep_id]
            types = np.zeros(T, dtype=np.int64)
            pair_label = None
        else:
            a, b, pair_label = self._pair(anchor, rng)
            ids = np.r_[self.cls_id, a, self.sep_id, b, self.sep_id]
            types = np.r_[np.zeros(len(a) + 2, dtype=np.int64), np.ones(len(b) + 1, dtype=np.int64)]
        n = len(ids)
        attention = np.r_[np.ones(n, dtype=np.int64), np.zeros(T - n, dtype=np.int64)]
        ids = np.r_[ids, np.full(T - n, self.pad_id, dtype=np.int64)]
        types = np.r_[types, np.zeros(T - len(types), dtype=np.int64)]
        inputs, labels = self.collator(ids, rng, maskable=attention.astype(bool))
        out = {"input_ids": inputs, "token_type_ids": types, "attention_mask": attention, "labels": labels}
        if pair_label is not None:
            out["pair_labels"] = np.int64(pair_label)
        return out

    def _pair(self, anchor: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        doc, offset = self._locate(anchor)
        length = int(self.doc_len[doc])
        n = min(length, self.span)
        start = min(offset, length - n)
        len_a = int(rng.integers(1, n))  # A and B both get at least one token
        a = self._doc_tokens(doc, start, len_a)
        b = self._doc_tokens(doc, start + len_a, n - len_a)
        coin = bool(rng.random() < 0.5)
        if self.pairs == "sop":
            return (b, a, 1) if coin else (a, b, 0)
        if not coin:
            return a, b, 0
        return a, self._random_segment(doc, start + len_a, n - len_a, rng), 1

    def _random_segment(self, doc: int, true_start: int, size: int, rng: np.random.Generator) -> np.ndarray:
        """``size`` tokens from a random place outside ``doc`` (inside it, but not at the true
        continuation, when the corpus is a single document)."""
        length = int(self.doc_len[doc])
        if len(self.doc_len) > 1:
            # Uniform over the other documents' tokens: skip over this document's stretch.
            position = int(rng.integers(0, self.n_positions - length))
            if position >= self.doc_offset[doc]:
                position += length
            other, offset = self._locate(position)
            start = max(0, min(offset, int(self.doc_len[other]) - size))
            return self._doc_tokens(other, start, size)
        start = int(rng.integers(0, length - size))  # length - size >= 1: A took at least one token
        if start >= true_start:
            start += 1
        return self._doc_tokens(doc, start, size)

    def batch(self, anchors, rngs) -> dict[str, torch.Tensor]:
        rows = [self.example(int(a), r) for a, r in zip(anchors, rngs)]
        return {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in rows[0]}


class PretrainingLoader(LMWindowLoader):
    """Resumable, rank-sliced batches of :class:`PretrainingExamples` (dicts of tensors).

    ``input_ids``, ``token_type_ids``, ``attention_mask``, ``labels`` (B, T), plus ``pair_labels``
    (B,) for NSP/SOP. Example ``j`` of the global batch at step ``k`` is built from
    ``np.random.default_rng([seed, k, j])`` and rank ``r`` keeps rows ``r * B`` to ``(r + 1) * B``,
    so the batch depends only on ``(seed, step)``, every rank builds just its own rows, and two
    ranks together see exactly what one process with twice the batch sees. Resuming from
    ``state_dict()`` continues exactly, as for :class:`LMWindowLoader`.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, *, tokenizer, pairs: str | None = None,
                 mask_prob: float = 0.15, whole_word: bool = False, seed: int = 1337, rank: int = 0,
                 world_size: int = 1):
        super().__init__(tokens, seq_len, batch_size, seed=seed, rank=rank, world_size=world_size)
        self.examples = PretrainingExamples(tokens, seq_len, tokenizer, pairs=pairs, mask_prob=mask_prob,
                                            whole_word=whole_word)

    def next_batch(self) -> dict[str, torch.Tensor]:
        rows = range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        rngs = [np.random.default_rng([self.seed, self.step, j]) for j in rows]
        anchors = [self.examples.random_anchor(r) for r in rngs]
        self.step += 1
        return self.examples.batch(anchors, rngs)


def iter_pretraining_eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int, *, tokenizer,
                                  pairs: str | None = None, mask_prob: float = 0.15, whole_word: bool = False,
                                  max_batches: int | None = None, seed: int = 0):
    """A fixed validation set: evenly spread anchors, example ``j`` masked by ``default_rng([seed, j])``."""
    examples = PretrainingExamples(tokens, seq_len, tokenizer, pairs=pairs, mask_prob=mask_prob,
                                   whole_word=whole_word)
    anchors = examples.eval_anchors(None if max_batches is None else max_batches * batch_size)
    for i in range(0, len(anchors), batch_size):
        chunk = anchors[i:i + batch_size]
        yield examples.batch(chunk, [np.random.default_rng([seed, i + j]) for j in range(len(chunk))])


# ---------------------------------------------------------------- span corruption (T5)
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


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: ``start_id`` followed by the labels but the last
    (ignored positions become ``pad_id``), as T5 and BART build them."""
    shifted = torch.full_like(labels, start_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_id)


def collate_seq2seq(pairs, *, pad_id: int, decoder_start_id: int) -> dict[str, torch.Tensor]:
    """Right-padded encoder-decoder batch from ``(source_ids, target_ids)`` pairs.

    ``input_ids`` and ``attention_mask`` (B, S); ``labels`` (B, T), IGNORE_INDEX past each target;
    ``decoder_input_ids`` the labels shifted right behind ``decoder_start_id``.
    """
    pairs = [(np.asarray(s, dtype=np.int64), np.asarray(t, dtype=np.int64)) for s, t in pairs]
    if not pairs or any(len(s) == 0 or len(t) == 0 for s, t in pairs):
        raise DataError("a sequence-to-sequence example has an empty source or target",
                        "drop empty examples from the data")
    S, T = max(len(s) for s, _ in pairs), max(len(t) for _, t in pairs)
    input_ids = np.full((len(pairs), S), pad_id, dtype=np.int64)
    attention = np.zeros((len(pairs), S), dtype=np.int64)
    labels = np.full((len(pairs), T), IGNORE_INDEX, dtype=np.int64)
    for i, (s, t) in enumerate(pairs):
        input_ids[i, :len(s)], attention[i, :len(s)], labels[i, :len(t)] = s, 1, t
    labels = torch.from_numpy(labels)
    return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention),
            "decoder_input_ids": shift_right(labels, decoder_start_id, pad_id), "labels": labels}


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
        rows = range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        rngs = [np.random.default_rng([self.seed, self.step, j]) for j in rows]
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
                               [np.random.default_rng([seed, i + j]) for j in range(len(chunk))])


class Seq2SeqLoader:
    """Resumable, rank-sliced batches of given ``(source_ids, target_ids)`` pairs (translation,
    summarisation): the global batch at step ``k`` draws its examples with
    ``np.random.default_rng([seed, k])`` and rank ``r`` keeps rows ``r * B`` to ``(r + 1) * B``;
    sources and targets longer than ``max_source_length`` / ``max_target_length`` are cut.
    See :func:`collate_seq2seq` for the batch layout.
    """

    def __init__(self, pairs, batch_size: int, *, pad_id: int, decoder_start_id: int,
                 max_source_length: int | None = None, max_target_length: int | None = None, seed: int = 1337,
                 rank: int = 0, world_size: int = 1):
        if len(pairs) == 0:
            raise DataError("no sequence-to-sequence examples", "pass at least one (source, target) pair")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}", "pass batch_size >= 1")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside [0, {world_size})", "launch with torchrun so RANK and "
                              "WORLD_SIZE agree")
        self.batch_size, self.seed, self.rank, self.world_size = int(batch_size), int(seed), int(rank), int(world_size)
        self.step = 0
        self.pairs = pairs
        self.pad_id, self.decoder_start_id = pad_id, decoder_start_id
        self.max_source_length, self.max_target_length = max_source_length, max_target_length

    def next_batch(self) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.step])
        picked = rng.integers(0, len(self.pairs), size=self.batch_size * self.world_size)
        self.step += 1
        mine = picked[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return collate_seq2seq([self._cut(self.pairs[i]) for i in mine], pad_id=self.pad_id,
                               decoder_start_id=self.decoder_start_id)

    def _cut(self, pair):
        source, target = pair
        return source[:self.max_source_length], target[:self.max_target_length]

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed}

    load_state_dict = LMWindowLoader.load_state_dict  # the same checks of a saved cursor

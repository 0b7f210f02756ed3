"""BERT pretraining examples cut from a flat token stream: masked windows, or the sentence pairs
of next-sentence prediction (NSP, BERT) and sentence-order prediction (SOP, ALBERT).

Documents in the stream are separated by the tokenizer's end-of-text token. Every random choice
comes from a numpy Generator passed in, so an example is a pure function of its seed.
"""
from __future__ import annotations

import numpy as np
import torch

from lmforge.data.loaders import LMWindowLoader, eval_generators
from lmforge.data.masking import MLMCollator, require_tokens
from lmforge.errors import ConfigError, DataError

PAIR_TASKS = ("nsp", "sop")


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
        rngs = self.row_generators()
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
        yield examples.batch(chunk, eval_generators(seed, i, len(chunk)))

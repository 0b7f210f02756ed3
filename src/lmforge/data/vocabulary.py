"""Growing a trained tokenizer's vocabulary by the characters a new corpus needs.

A pretrained English vocabulary meeting Chinese text is the usual case: find the characters it
can only encode as unknown (:func:`unknown_characters`), then add them (:func:`add_characters`)
and resize the model's embeddings to match.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Iterable, Sequence

import tokenizers as hf

from lmforge.data.text import is_cjk
from lmforge.data.tokenizers import Tokenizer
from lmforge.errors import ConfigError


def unknown_characters(tokenizer: Tokenizer, texts: Iterable[str], min_count: int = 1) -> list[str]:
    """Characters of ``texts`` that ``tokenizer`` can only encode as its unknown token, seen at least
    ``min_count`` times, most frequent first (ties by code point), in the tokenizer's normalized form.

    A pretrained English vocabulary meeting Chinese text is the usual case: BERT's uncased WordPiece
    knows a few hundred CJK characters, so most of a Chinese passage becomes ``[UNK]``.
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text)
    unk = tokenizer.unk_id
    if unk is None:  # byte-level BPE: every character has bytes to fall back on
        return []
    normalizer = tokenizer.hf.normalizer
    merged: Counter[str] = Counter()
    for ch, n in counts.items():
        if ch.isspace():
            continue
        # BERT's normalizer pads CJK characters with spaces so that they split off as words.
        norm = normalizer.normalize_str(ch).strip() if normalizer is not None else ch
        if len(norm) == 1:
            merged[norm] += n
    candidates = [ch for ch, n in merged.items() if n >= min_count]
    encoded = tokenizer.hf.encode_batch(candidates, add_special_tokens=False)
    unknown = [ch for ch, e in zip(candidates, encoded) if e.ids == [unk]]
    return sorted(unknown, key=lambda ch: (-merged[ch], ord(ch)))


def add_characters(tokenizer: Tokenizer, chars: Sequence[str]) -> Tokenizer:
    """A copy of ``tokenizer`` whose vocabulary also holds ``chars``, with ids from ``vocab_size`` on.

    WordPiece gets each character as a word and, unless it is a CJK character (which BERT's
    normalizer always splits off on its own), as a word-continuing ``##`` piece too, so that words
    containing it encode as well. Character tokenizers get it as a token. Everything else about the
    tokenizer (normalizer, pre-tokenizer, special tokens, templates) is unchanged.
    """
    spec = json.loads(tokenizer.hf.to_str())
    model = spec["model"]
    if model.get("type") not in ("WordPiece", "WordLevel") or not isinstance(model.get("vocab"), dict):
        raise ConfigError(f"cannot add characters to a {model.get('type')} tokenizer",
                          "extend the vocabulary of WordPiece (BERT) or character tokenizers only")
    vocab: dict[str, int] = model["vocab"]
    prefix = model.get("continuing_subword_prefix") if model["type"] == "WordPiece" else None
    next_id = tokenizer.vocab_size
    for ch in chars:
        for piece in (ch, None if prefix is None or is_cjk(ch) else prefix + ch):
            if piece is not None and piece not in vocab:
                vocab[piece] = next_id
                next_id += 1
    return Tokenizer(hf.Tokenizer.from_str(json.dumps(spec)), tokenizer.kind)

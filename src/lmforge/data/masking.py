"""Masked-language-model inputs: BERT's 80/10/10 rule, optionally whole words at a time.

Every random choice comes from a numpy Generator passed in, so a masked sequence is a pure
function of its seed.
"""
from __future__ import annotations

import numpy as np

from lmforge.data.collate import IGNORE_INDEX
from lmforge.data.text import is_cjk
from lmforge.errors import ConfigError


def _word_char(ch: str) -> bool:
    return (ch.isalnum() or ch == "_") and not is_cjk(ch)


# Per tokenizer kind: (does this token continue the previous token's word, can the next token continue its word).
def _wordpiece_joins(tok: str) -> tuple[bool, bool]:
    return tok.startswith("##") and len(tok) > 2 and not is_cjk(tok[2]), not is_cjk(tok[-1])


def _char_joins(tok: str) -> tuple[bool, bool]:
    joins = len(tok) == 1 and _word_char(tok)
    return joins, joins


def _unigram_joins(tok: str) -> tuple[bool, bool]:
    return not tok.startswith("▁") and not is_cjk(tok[0]), not is_cjk(tok[-1])


def _byte_level_joins(tok: str) -> tuple[bool, bool]:
    # Bytes of non-ASCII characters are never treated as word pieces.
    return tok[0].isascii() and _word_char(tok[0]), tok[-1].isascii() and _word_char(tok[-1])


_WORD_JOINS = {"wordpiece": _wordpiece_joins, "char": _char_joins, "unigram": _unigram_joins, "bpe": _byte_level_joins}


def word_tables(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Two bool tables over the vocabulary that say where words continue across tokens.

    Token i belongs to the same word as token i-1 when ``continues[ids[i]] and extendable[ids[i-1]]``.
    WordPiece marks continuations with ``##``, Unigram marks word starts with ``▁``, byte-level BPE
    with ``Ġ``; for characters a word is a run of letters, digits and underscores. A CJK character
    is always a word of its own, and special tokens never join anything.
    """
    joins = _WORD_JOINS.get(tokenizer.kind, _byte_level_joins)
    vocab = tokenizer.vocab_size
    specials = set(special_ids(tokenizer))
    continues = np.zeros(vocab, dtype=bool)
    extendable = np.zeros(vocab, dtype=bool)
    for i in range(vocab):
        tok = tokenizer.id_to_token(i)
        if i in specials or not tok:
            continue
        continues[i], extendable[i] = joins(tok)
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

"""Tokenizers: byte-level BPE, WordPiece, Unigram and character-level, all on HF ``tokenizers``.

BPE and WordPiece are trained by ``tokenizers``; Unigram by SentencePiece (the same algorithm, and
deterministic where the ``tokenizers`` trainer is not), then converted. Training is deterministic:
the same text gives the same tokenizer in every process.

Every kind saves to and loads from one standard ``tokenizer.json`` that the
Hugging Face ``tokenizers``/``transformers`` libraries can also read; the kind is
recognised from the model type and pre-tokenizer stored in that file.

Round trips (``decode(encode(s))``):

* ``bpe`` and ``char``: exact for any text, including Chinese and emoji
  (``char`` maps characters never seen in training to ``<unk>``, which decodes to nothing);
* ``unigram``: exact for text made of known characters, except that leading spaces
  of the whole text are dropped (SentencePiece convention);
* ``wordpiece``: whitespace is not kept - words and punctuation come back separated
  by single spaces (``"Hello,\\nworld!"`` -> ``"Hello, world!"``), as in BERT.
"""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm
import tokenizers as hf
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmforge.errors import ConfigError, DataError


TOKENIZER_KINDS = ("bpe", "wordpiece", "unigram", "char")
EOT = "<|endoftext|>"
UNK = "<unk>"
MAX_VOCAB_SIZE = 4_294_967_295

# Tokens every kind needs, in id order (so the end-of-text token of bpe is id 0).
_REQUIRED_SPECIALS = {
    "bpe": (EOT,),
    "wordpiece": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    "unigram": (EOT, UNK),
    "char": (EOT, UNK),
}
_EOS_CANDIDATES = (EOT, "[SEP]", "</s>", "<eos>", "<|end_of_text|>")
_PAD_CANDIDATES = ("[PAD]", "<pad>", "<|pad|>")
_UNK_CANDIDATES = ("[UNK]", UNK)
_BYTE_ALPHABET = 256


# A space with CJK characters or full-width punctuation on both sides.
_CJK_CHARS = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_SPACE_BETWEEN_CJK = re.compile(f"(?<=[{_CJK_CHARS}]) (?=[{_CJK_CHARS}])")


class Tokenizer:
    """A trained tokenizer: ``encode``/``decode`` plus the ids a model needs (``eos_id``, ``pad_id``).

    Wraps a ``tokenizers.Tokenizer`` (available as ``.hf``). Build one with
    :func:`train_tokenizer` or :meth:`Tokenizer.load`.
    """

    def __init__(self, hf_tokenizer: hf.Tokenizer, kind: str | None = None):
        self.hf = hf_tokenizer
        self.kind = kind or _detect_kind(hf_tokenizer)
        eos = _first_present(hf_tokenizer, _EOS_CANDIDATES)
        if eos is None:
            raise DataError(
                "the tokenizer has no end-of-text token (looked for " + ", ".join(_EOS_CANDIDATES) + ")",
                "train it with lmforge, or add one of those tokens as a special token",
            )
        self.eos_id: int = eos
        pad = _first_present(hf_tokenizer, _PAD_CANDIDATES)
        self.pad_id: int = eos if pad is None else pad

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def unk_id(self) -> int | None:
        """Id of the unknown token; None when every text can be encoded (byte-level BPE)."""
        return _first_present(self.hf, _UNK_CANDIDATES)

    @property
    def special_tokens(self) -> list[str]:
        return [t.content for t in self.hf.get_added_tokens_decoder().values() if t.special]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no special tokens are added."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel by the Rust library."""
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens are skipped."""
        text = self.hf.decode([int(i) for i in ids], skip_special_tokens=True)
        if self.kind == "wordpiece":
            # WordPiece splits CJK text into single characters and its decoder joins every token with a
            # space: "我 们 。"; Chinese and Japanese are written without spaces, so drop those again.
            text = _SPACE_BETWEEN_CJK.sub("", text)
        return text

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        return self.hf.id_to_token(int(id))

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (``path`` is that file or a folder to put it in); returns the file."""
        path = Path(path)
        if path.suffix != ".json":
            path.mkdir(parents=True, exist_ok=True)
            path = path / "tokenizer.json"
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the target and renamed, so a crash never leaves half a file.
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self.hf.to_str(pretty=True))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load a ``tokenizer.json``, given the file or the folder that holds it."""
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise DataError(
                f"no tokenizer at {path}",
                "pass a tokenizer.json written by `lmforge prepare` (or the folder that holds it)",
            )
        try:
            tok = hf.Tokenizer.from_file(str(path))
        except Exception as e:
            raise DataError(
                f"{path} is not a valid tokenizer.json ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                "re-create it with `lmforge prepare` or point to an intact copy",
            ) from None
        return cls(tok)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def check_tokenizer_args(kind: str, vocab_size: int, special_tokens: Sequence[str] | None = None,
                         extra_ids: int = 0) -> tuple[str, ...]:
    """Validate a tokenizer request and return the full special-token list for ``kind``.

    Raises ``ConfigError`` for an unknown kind, a negative ``extra_ids`` or an impossible vocabulary size.
    """
    if kind not in TOKENIZER_KINDS:
        raise ConfigError(f"unknown tokenizer {kind!r}", "choose one of: " + ", ".join(TOKENIZER_KINDS))
    if isinstance(extra_ids, bool) or not isinstance(extra_ids, int) or extra_ids < 0:
        raise ConfigError(f"extra_ids must be a non-negative integer, got {extra_ids!r}",
                          "pass e.g. --extra_ids 100 (T5's sentinel count), or 0 for none")
    specials = tuple(dict.fromkeys((*_REQUIRED_SPECIALS[kind], *(special_tokens or ()))))
    if kind == "char":
        return specials  # the vocabulary is the set of characters seen, whatever vocab_size says
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ConfigError(f"vocab_size must be an integer, got {vocab_size!r}", "pass e.g. --vocab_size 8192")
    minimum = len(specials) + extra_ids + 1 + (_BYTE_ALPHABET if kind == "bpe" else 0)
    if not minimum <= vocab_size <= MAX_VOCAB_SIZE:
        why = f"{len(specials) + extra_ids} special tokens" + (" and 256 byte tokens" if kind == "bpe" else "")
        raise ConfigError(
            f"vocab_size {vocab_size} is out of range for the {kind} tokenizer",
            f"use a value between {minimum} (room for {why} plus one) and {MAX_VOCAB_SIZE}",
        )
    return specials


def train_tokenizer(
    kind: str,
    texts: Iterable[str],
    vocab_size: int,
    *,
    special_tokens: Sequence[str] | None = None,
    extra_ids: int = 0,
) -> Tokenizer:
    """Train a tokenizer of ``kind`` ("bpe", "wordpiece", "unigram" or "char") on ``texts``.

    ``special_tokens`` adds tokens to the ones the kind always has
    (``<|endoftext|>`` for bpe; ``<|endoftext|>``, ``<unk>`` for unigram and char;
    ``[PAD] [UNK] [CLS] [SEP] [MASK]`` for wordpiece). Special tokens take the
    first ids. For ``char`` the vocabulary is every distinct character of ``texts``
    plus the special tokens, and ``vocab_size`` is ignored.

    ``extra_ids`` adds that many sentinel tokens ``<extra_id_0>``, ``<extra_id_1>``, ... (T5's span
    corruption) as special tokens at the top of the vocabulary, ``<extra_id_0>`` last as in T5;
    ``vocab_size`` includes them.
    """
    specials = check_tokenizer_args(kind, vocab_size, special_tokens, extra_ids)
    texts = list(texts) if not isinstance(texts, (list, tuple)) else texts
    trained = _TRAINERS[kind](texts, vocab_size - extra_ids, specials)
    return _add_sentinels(Tokenizer(trained, kind), extra_ids)


def _train_bpe(texts: Sequence[str], vocab_size: int, specials: Sequence[str]) -> hf.Tokenizer:
    """Byte-level BPE, as GPT-2's: every byte is in the alphabet, so any text encodes."""
    tok = hf.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def _train_wordpiece(texts: Sequence[str], vocab_size: int, specials: Sequence[str]) -> hf.Tokenizer:
    """BERT's WordPiece (cased), with the [CLS]/[SEP] templates of single texts and sentence pairs."""
    tok = hf.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    # The trainer numbers its "##x" pieces in hash-map order, which changes from process to process,
    # and those numbers break ties between equally frequent merges, so the same text could give
    # different vocabularies (huggingface/tokenizers#1794). Registered up front, in sorted order,
    # they get the same ids every time; `_plain_wordpiece` then makes them ordinary pieces again.
    continuing = _continuing_pieces(tok, texts, specials)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=[*specials, *continuing], continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tok = _plain_wordpiece(tok, specials)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def _train_unigram(texts: Sequence[str], vocab_size: int, specials: Sequence[str]) -> hf.Tokenizer:
    """A Unigram LM tokenizer trained by SentencePiece, in the `tokenizers` format.

    Hugging Face's Unigram trainer runs its EM over a hash-ordered word list, so the same text gives a
    slightly different vocabulary in every process (and one thread does not help); SentencePiece, the
    algorithm's reference implementation, gives the same one every time. Text is taken as it is (no
    normalization), words split at spaces and marked with "▁", every character kept, as the Metaspace
    pre-tokenizer used to encode does. The special tokens take the first ids.
    """
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError("no text to train the unigram tokenizer on", "pass a non-empty corpus")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, model_type="unigram",
            vocab_size=vocab_size - len(specials) + 1,  # + SentencePiece's own unknown piece, dropped below
            hard_vocab_limit=False, character_coverage=1.0, normalization_rule_name="identity",
            add_dummy_prefix=True, remove_extra_whitespaces=False, split_by_whitespace=True,
            split_by_unicode_script=False, split_by_number=False,
            # Whole documents are sentences here: none may be skipped for its length (limits: 10 B .. 1 GiB).
            max_sentence_length=min(max(16, max(len(t.encode("utf-8")) for t in texts) + 1), 1 << 30),
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, num_threads=os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as e:
        if "required_chars" in str(e):
            raise ConfigError(f"vocab_size {vocab_size} is smaller than the number of distinct characters in the "
                              "text, and the unigram tokenizer keeps every character", "pass a larger --vocab_size")
        raise
    trained = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [(trained.id_to_piece(i), trained.get_score(i)) for i in range(trained.get_piece_size())
              if not (trained.is_unknown(i) or trained.is_control(i))]
    vocab = [(t, 0.0) for t in specials] + [(piece, score) for piece, score in pieces if piece not in specials]
    tok = hf.Tokenizer(models.Unigram(vocab, unk_id=list(specials).index(UNK), byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.add_special_tokens(list(specials))
    return tok


def _continuing_pieces(tok: hf.Tokenizer, texts: Sequence[str], specials: Sequence[str]) -> list[str]:
    """Every "##c" piece WordPiece training will create, sorted: a training pass that stops before the
    first merge makes exactly that set (whatever ids it gives them), at the cost of one word count."""
    probe = hf.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    probe.normalizer, probe.pre_tokenizer = tok.normalizer, tok.pre_tokenizer
    probe.train_from_iterator(texts, length=len(texts), trainer=trainers.WordPieceTrainer(
        vocab_size=1, special_tokens=list(specials), continuing_subword_prefix="##", show_progress=False))
    return sorted(piece for piece in probe.get_vocab(with_added_tokens=False)
                  if piece.startswith("##") and piece not in specials)


def _plain_wordpiece(trained: hf.Tokenizer, specials: Sequence[str]) -> hf.Tokenizer:
    """The trained WordPiece model with only `specials` as special tokens (same ids, same pipeline)."""
    tok = hf.Tokenizer(models.WordPiece(trained.get_vocab(with_added_tokens=False), unk_token="[UNK]",
                                        continuing_subword_prefix="##"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = trained.normalizer, trained.pre_tokenizer, trained.decoder
    tok.add_special_tokens(list(specials))
    return tok


def sentinel_token(i: int) -> str:
    """The name of T5's i-th span-corruption sentinel."""
    return f"<extra_id_{i}>"


def _add_sentinels(tok: Tokenizer, n: int) -> Tokenizer:
    if n:
        tok.hf.add_special_tokens([sentinel_token(i) for i in reversed(range(n))])
    return tok


def _train_char(texts: Sequence[str], vocab_size: int, specials: Sequence[str]) -> hf.Tokenizer:
    """One token per distinct character of ``texts`` (``vocab_size`` has no say)."""
    chars: set[str] = set()
    for t in texts:
        chars.update(t)
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(chars - set(vocab)):
        vocab[ch] = len(vocab)
    tok = hf.Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # One pre-token per character ("[\s\S]" also matches newlines, unlike ".").
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(specials))
    return tok


_TRAINERS = {"bpe": _train_bpe, "wordpiece": _train_wordpiece, "unigram": _train_unigram, "char": _train_char}


# The kind of a loaded tokenizer, by its model type; WordLevel models are per-character when they split every character.
_KIND_OF_MODEL = {"BPE": "bpe", "WordPiece": "wordpiece", "Unigram": "unigram"}


def _detect_kind(tok: hf.Tokenizer) -> str:
    model = type(tok.model).__name__
    if model in _KIND_OF_MODEL:
        return _KIND_OF_MODEL[model]
    if model == "WordLevel":
        pre = json.loads(tok.to_str()).get("pre_tokenizer") or {}
        if pre.get("type") == "Split":
            return "char"
    return model.lower()


def _first_present(tok: hf.Tokenizer, candidates: Sequence[str]) -> int | None:
    for token in candidates:
        i = tok.token_to_id(token)
        if i is not None:
            return i
    return None

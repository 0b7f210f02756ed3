import pytest

from lmforge.data.tokenizers import Tokenizer, train_tokenizer
from lmforge.data.vocabulary import add_characters, unknown_characters
from lmforge.errors import ConfigError

ENGLISH_ONLY = ["the quick brown fox jumps over the lazy dog", "a lazy dog and a quick fox"] * 5


def test_unknown_characters_are_the_ones_that_encode_as_unk_most_frequent_first():
    english = train_tokenizer("wordpiece", ENGLISH_ONLY, 80)
    texts = ["中文很好。", "文字 the fox", "q€z and 中"]
    unknown = unknown_characters(english, texts)
    unk = english.token_to_id("[UNK]")
    assert set(unknown) == {"中", "文", "很", "好", "。", "字", "€"}
    assert unknown[:2] == ["中", "文"]  # twice each: frequency first, then code point
    assert all(english.encode(ch) == [unk] for ch in unknown)
    assert unknown_characters(english, texts, min_count=2) == ["中", "文"]
    assert unknown_characters(train_tokenizer("bpe", ENGLISH_ONLY, 300), texts) == []  # bytes cover everything


def test_added_characters_encode_and_known_ids_stay_where_they_were(tmp_path):
    english = train_tokenizer("wordpiece", ENGLISH_ONLY, 80)
    unk = english.token_to_id("[UNK]")
    chars = unknown_characters(english, ["中文很好", "q€z"])
    grown = add_characters(english, chars)
    # CJK characters are words of their own; other characters also get their "##" form for inside words.
    assert chars == ["€", "中", "好", "很", "文"]  # seen once each: by code point
    assert grown.vocab_size == english.vocab_size + 4 + 2
    assert sorted(grown.token_to_id(c) for c in chars)[0] == english.vocab_size
    assert grown.encode("the lazy dog jumps") == english.encode("the lazy dog jumps")
    assert unk in english.encode("中文很好 q€z")
    assert unk not in grown.encode("中文很好 q€z") and grown.decode(grown.encode("中文很好")) == "中文很好"
    assert grown.encode("[CLS]") == english.encode("[CLS]")
    again = Tokenizer.load(grown.save(tmp_path))
    assert again.encode("中文 q€z") == grown.encode("中文 q€z") and again.kind == "wordpiece"

    chars_tok = train_tokenizer("char", ENGLISH_ONLY, 0)
    grown_chars = add_characters(chars_tok, unknown_characters(chars_tok, ["中文"]))
    assert grown_chars.decode(grown_chars.encode("the 中文")) == "the 中文"
    with pytest.raises(ConfigError, match="Unigram"):
        add_characters(train_tokenizer("unigram", ENGLISH_ONLY * 3, 40), ["中"])


def test_unk_id():
    assert train_tokenizer("wordpiece", ENGLISH_ONLY, 80).unk_id is not None
    assert train_tokenizer("char", ENGLISH_ONLY, 0).unk_id is not None
    assert train_tokenizer("bpe", ENGLISH_ONLY, 300).unk_id is None

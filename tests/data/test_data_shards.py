import json
import os

import numpy as np
import pytest

from lmforge.data import shards
from lmforge.data.shards import (
    PrepareOptions,
    load_dataset_meta,
    open_split,
    open_tokens,
    prepare_dataset,
    split_documents,
    token_dtype,
    write_json_atomic,
    write_tokens,
)
from lmforge.data.tokenizers import Tokenizer
from lmforge.errors import ConfigError, DataError

VERSE = (
    "Shall I compare thee to a summer's day?\n"
    "Thou art more lovely and more temperate:\n"
    "Rough winds do shake the darling buds of May,\n"
    "And summer's lease hath all too short a date.\n"
)


def test_token_dtype():
    assert token_dtype(256) == np.uint16
    assert token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32
    assert token_dtype(200_000) == np.uint32


def test_write_and_open_tokens(tmp_path):
    ids = np.array([0, 1, 65_535, 7], dtype=np.uint16)
    path = write_tokens(tmp_path / "x.bin", ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]  # no temp file left
    mm = open_tokens(path, "uint16")
    assert isinstance(mm, np.memmap) and mm.tolist() == ids.tolist()
    with pytest.raises(ValueError):
        mm[0] = 3  # read-only
    write_tokens(path, np.arange(3, dtype=np.uint32))  # replaces atomically
    assert open_tokens(path, np.uint32).tolist() == [0, 1, 2]
    with pytest.raises(DataError, match="not a whole number"):
        open_tokens(path, np.dtype("<u8"))


def test_write_json_atomic(tmp_path):
    path = write_json_atomic(tmp_path / "m.json", {"a": 1, "b": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": 1, "b": "é"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_split_single_document_by_characters():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    train, val = split_documents([text], 0.1, seed=1)
    assert train == [text[:900]] and val == [text[900:]]


def test_split_many_documents_by_hash_is_stable():
    docs = [f"document number {i}" for i in range(200)]
    train, val = split_documents(docs, 0.1, seed=1337)
    assert sorted(train + val) == sorted(docs) and 5 <= len(val) <= 40
    assert split_documents(docs, 0.1, seed=1337) == (train, val)
    assert split_documents(docs, 0.1, seed=7) != (train, val)
    # Adding documents never moves existing ones to the other split.
    train2, val2 = split_documents(docs + [f"extra {i}" for i in range(50)], 0.1, seed=1337)
    assert set(val) <= set(val2) and set(train) <= set(train2)
    # Each split always gets at least one document.
    assert all(split_documents(docs[:20], 0.001, seed=s)[1] for s in range(5))


def _assert_clean_parent(out):
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(out.name + ".")]
    assert leftovers == []


def test_prepare_end_to_end(tmp_path):
    src = tmp_path / "verse.txt"
    src.write_text(VERSE * 30, encoding="utf-8")
    out = tmp_path / "ds"
    meta = prepare_dataset(str(src), out, tokenizer="char", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    _assert_clean_parent(out)
    assert meta == load_dataset_meta(out)
    text = (VERSE * 30).strip()
    assert meta["format"] == "lmforge-tokens-v1" and meta["tokenizer"] == "char" and meta["dtype"] == "uint16"
    assert meta["train_chars"] + meta["val_chars"] == len(text)
    assert meta["val_chars"] == len(text) - int(len(text) * 0.9)
    assert (meta["train_tokens"], meta["val_tokens"]) == (meta["train_chars"], meta["val_chars"])
    tok = Tokenizer.load(out)
    assert tok.vocab_size == meta["vocab_size"] == len(set(text)) + 2
    assert tok.decode(open_split(out, "train")) + tok.decode(open_split(out, "val")) == text


def test_prepare_with_an_options_object(tmp_path):
    src = tmp_path / "verse.txt"
    src.write_text(VERSE * 30, encoding="utf-8")
    options = PrepareOptions(tokenizer="char", progress=False)
    by_options = prepare_dataset(str(src), tmp_path / "a", options)
    by_keywords = prepare_dataset(str(src), tmp_path / "b", tokenizer="char", progress=False)
    assert by_options == by_keywords
    overridden = prepare_dataset(str(src), tmp_path / "c", options, val_fraction=0.2)
    assert overridden["val_fraction"] == 0.2 and overridden["val_chars"] > by_options["val_chars"]


def test_prepare_many_documents_bpe(tmp_path):
    src = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"Document {i}: " + VERSE.split("\n")[i % 4]}) for i in range(60)]
    src.write_text("\n".join(lines + lines[:5]), encoding="utf-8")  # 5 exact duplicates
    out = tmp_path / "ds"
    meta = prepare_dataset(str(src), out, tokenizer="bpe", vocab_size=300, progress=False, num_workers=2)
    assert meta["num_documents"] == 60 and meta["split"] == "documents"
    tok = Tokenizer.load(out)
    train = np.asarray(open_split(out, "train"))
    # Documents are separated by the end-of-text token.
    n_train_docs = (train == tok.eos_id).sum() + 1
    assert 60 - n_train_docs == (np.asarray(open_split(out, "val")) == tok.eos_id).sum() + 1
    assert meta["train_bytes"] + meta["val_bytes"] == sum(
        len(json.loads(x)["text"].encode()) for x in lines)
    # Re-preparing with the saved tokenizer gives the same tokens.
    meta2 = prepare_dataset(str(src), tmp_path / "ds2", tokenizer_path=str(out / "tokenizer.json"), progress=False)
    assert np.array_equal(open_split(tmp_path / "ds2", "train"), train)
    assert meta2["vocab_size"] == meta["vocab_size"]


def test_prepare_refuses_existing_output_and_overwrites_on_request(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text(VERSE * 5, encoding="utf-8")
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="already exists") as e:
        prepare_dataset(str(src), out, tokenizer="char", progress=False)
    assert "--overwrite" in e.value.fix
    prepare_dataset(str(src), out, tokenizer="char", progress=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "meta.json").exists()
    _assert_clean_parent(out)


def test_failed_prepare_leaves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "a.txt"
    src.write_text(VERSE * 5, encoding="utf-8")
    out = tmp_path / "ds"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(shards, "write_json_atomic", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_dataset(str(src), out, tokenizer="char", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"val_fraction": 0.0}, ConfigError, "val_fraction"),
        ({"val_fraction": 0.6}, ConfigError, "val_fraction"),
        ({"tokenizer": "nope"}, ConfigError, "unknown tokenizer"),
        ({"num_workers": 0}, ConfigError, "num_workers"),
    ],
)
def test_prepare_argument_errors(tmp_path, kwargs, error, message):
    src = tmp_path / "a.txt"
    src.write_text(VERSE, encoding="utf-8")
    with pytest.raises(error, match=message):
        prepare_dataset(str(src), tmp_path / "ds", progress=False, **kwargs)
    assert not (tmp_path / "ds").exists()


def test_prepare_empty_validation_split(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("w" * 100 + " " * 20, encoding="utf-8")  # the last 10% is only spaces
    out = tmp_path / "ds"
    with pytest.raises(DataError, match="validation split holds no tokens"):
        prepare_dataset(str(src), out, tokenizer="wordpiece", vocab_size=50, clean=False, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_load_dataset_meta_errors(tmp_path):
    with pytest.raises(DataError, match="not a prepared dataset") as e:
        load_dataset_meta(tmp_path)
    assert "lmforge prepare" in e.value.fix
    (tmp_path / "meta.json").write_text("{oops")
    with pytest.raises(DataError, match="corrupt"):
        load_dataset_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="lmforge-tokens-v1"):
        load_dataset_meta(tmp_path)


def test_tinyshakespeare_standard_split(tmp_path):
    root = os.environ.get("LMFORGE_DATA_DIR")
    if not root:
        pytest.skip("LMFORGE_DATA_DIR not set: tinyshakespeare/input.txt lives under it")
    meta = prepare_dataset("tinyshakespeare", tmp_path / "ts", tokenizer="char", clean=False, progress=False)
    assert (meta["train_tokens"], meta["val_tokens"]) == (1_003_854, 111_540)
    assert meta["vocab_size"] == 65 + 2

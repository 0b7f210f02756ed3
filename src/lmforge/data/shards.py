"""Token shards: a prepared dataset is a folder of flat token files plus JSON metadata.

Layout written by :func:`prepare_dataset`::

    DIR/train.bin        token ids, native byte order, dtype from meta["dtype"]
    DIR/val.bin
    DIR/tokenizer.json   the tokenizer that produced them
    DIR/meta.json        counts and provenance (format "lmforge-tokens-v1")

Within a split, documents are separated by the tokenizer's end-of-text token
(``eos_id``): ``doc1 <eos> doc2 <eos> ... docN``.

Every file is written atomically (temporary file, fsync, rename) and the folder
itself appears only once complete, so an interrupted run never leaves a
half-written dataset behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from lmforge.atomic import write_bytes_atomic, write_json_atomic
from lmforge.data.clean import clean_documents
from lmforge.data.encoding import Encoder, write_split
from lmforge.data.sources import read_documents
from lmforge.data.tokenizers import Tokenizer, check_tokenizer_args, train_tokenizer
from lmforge.errors import ConfigError, DataError

FORMAT = "lmforge-tokens-v1"
SPLITS = ("train", "val")
# Below this many documents a per-document split is too coarse, so the text is cut by characters.
MIN_DOCUMENTS_FOR_DOCUMENT_SPLIT = 20
_META_KEYS = ("format", "dtype", "vocab_size", "eos_id", "train_tokens", "val_tokens")


# ----------------------------------------------------------------------------- files


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id: uint16 up to 65,536 tokens, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_tokens(path: str | os.PathLike, ids: np.ndarray) -> Path:
    """Write ``ids`` (kept in their dtype) as a flat binary file, atomically."""
    ids = np.ascontiguousarray(ids)
    return write_bytes_atomic(path, memoryview(ids).cast("B"))


def open_tokens(path: str | os.PathLike, dtype: str | np.dtype) -> np.ndarray:
    """Memory-map a token file read-only (an empty file gives an empty array)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"token file {path} does not exist", "run `lmforge prepare --data ... --out DIR` first")
    dtype = np.dtype(dtype)
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise DataError(
            f"{path} is {size} bytes, not a whole number of {dtype} tokens (truncated copy?)",
            "prepare the dataset again",
        )
    if size == 0:
        return np.zeros(0, dtype=dtype)  # mmap cannot map an empty file
    return np.memmap(path, dtype=dtype, mode="r")


def load_dataset_meta(dir: str | os.PathLike) -> dict:
    """Read and check ``DIR/meta.json`` of a prepared dataset (and the sizes of its token files)."""
    dir = Path(dir)
    fix = f"run `lmforge prepare --data ... --out {dir}` first"
    path = dir / "meta.json"
    if not path.is_file():
        raise DataError(f"{dir} is not a prepared dataset (no meta.json)", fix)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is corrupt ({e})", fix) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path} is not an lmforge dataset description (format {FORMAT!r} expected)", fix)
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}", fix)
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        bin_path = dir / f"{split}.bin"
        expected = meta[f"{split}_tokens"] * itemsize
        if not bin_path.is_file() or bin_path.stat().st_size != expected:
            raise DataError(f"{bin_path} is missing or not {expected} bytes as meta.json says", fix)
    return meta


def open_split(dir: str | os.PathLike, split: str = "train") -> np.ndarray:
    """Memory-map the ``train`` or ``val`` tokens of a prepared dataset."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}", "use 'train' or 'val'")
    meta = load_dataset_meta(dir)
    return open_tokens(Path(dir) / f"{split}.bin", meta["dtype"])


# ----------------------------------------------------------------------------- splitting


def split_documents(docs: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split; returns the text pieces of each split.

    With at least ``MIN_DOCUMENTS_FOR_DOCUMENT_SPLIT`` documents, each document goes
    to validation when a seeded hash of its text falls below ``val_fraction`` (so
    adding documents never moves others, and duplicates share a split); each split
    gets at least one document. With fewer documents the text is cut by characters:
    the last ``val_fraction`` of it is validation (for one file this is the classic
    first-90%/last-10% split).
    """
    if len(docs) >= MIN_DOCUMENTS_FOR_DOCUMENT_SPLIT:
        salt = str(seed).encode() + b"\0"
        scores = [
            int.from_bytes(hashlib.blake2b(salt + d.encode("utf-8"), digest_size=8).digest(), "big") / 2**64
            for d in docs
        ]
        in_val = [s < val_fraction for s in scores]
        if not any(in_val):
            in_val[int(np.argmin(scores))] = True
        if all(in_val):
            in_val[int(np.argmax(scores))] = False
        return [d for d, v in zip(docs, in_val) if not v], [d for d, v in zip(docs, in_val) if v]

    total = sum(len(d) for d in docs)
    if total < 2:
        raise DataError("the data holds fewer than 2 characters of text", "pass more text")
    cut = min(max(int(total * (1 - val_fraction)), 1), total - 1)
    train: list[str] = []
    val: list[str] = []
    start = 0
    for d in docs:
        end = start + len(d)
        if end <= cut:
            train.append(d)
        elif start >= cut:
            val.append(d)
        else:
            train.append(d[: cut - start])
            val.append(d[cut - start :])
        start = end
    return train, val


# ----------------------------------------------------------------------------- prepare


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} is a file", "choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"output directory {out} already exists", "pass --overwrite or choose another --out")


@dataclass(frozen=True)
class PrepareOptions:
    """How :func:`prepare_dataset` turns raw text into a dataset folder.

    ``text_field`` and ``column`` pick the text of structured files (see
    :func:`~lmforge.data.sources.read_documents`); ``clean=False`` keeps the text byte for byte.
    A ``tokenizer`` of ``vocab_size`` (with ``extra_ids`` T5 sentinels) is trained on the
    training split, unless ``tokenizer_path`` names one to load. ``num_workers`` sets the
    encoding threads (default: all cores).
    """

    tokenizer: str = "bpe"
    vocab_size: int = 8192
    val_fraction: float = 0.1
    seed: int = 1337
    text_field: str = "text"
    column: str | None = None
    tokenizer_path: str | None = None
    overwrite: bool = False
    num_workers: int | None = None
    progress: bool = True
    clean: bool = True
    extra_ids: int = 0


def prepare_dataset(data: str, out: str | os.PathLike, options: PrepareOptions | None = None, **settings: Any) -> dict:
    """Turn raw text into a tokenized dataset folder ``out``; returns its metadata.

    Reads ``data`` (see :func:`~lmforge.data.sources.read_documents`), cleans and
    de-duplicates it, splits it into train/validation (:func:`split_documents`), trains a
    tokenizer on the training split only - or loads one - and writes ``train.bin``,
    ``val.bin``, ``tokenizer.json`` and ``meta.json``. Pass a :class:`PrepareOptions`, or its
    fields as keywords (``tokenizer="char", vocab_size=...``); keywords given with ``options``
    replace those fields.
    """
    options = PrepareOptions(**settings) if options is None else replace(options, **settings)
    out = Path(out).expanduser()
    loaded = _check_request(out, options)
    docs = _read_documents(data, options)
    train_pieces, val_pieces = split_documents(docs, options.val_fraction, options.seed)
    splits = {"train": train_pieces, "val": val_pieces}
    with _staging_folder(out) as folder:
        tok = loaded or train_tokenizer(
            options.tokenizer, train_pieces, options.vocab_size, extra_ids=options.extra_ids
        )
        counts = _encode_splits(folder, splits, tok, options)
        tok.save(folder / "tokenizer.json")
        meta = _dataset_meta(data, docs, splits, tok, counts, options)
        write_json_atomic(folder / "meta.json", meta)
    return meta


def _check_request(out: Path, options: PrepareOptions) -> Tokenizer | None:
    """Refuse bad options before any work; returns the tokenizer to load, if one is named."""
    if not 0 < options.val_fraction <= 0.5:
        raise ConfigError(
            f"val_fraction must be in (0, 0.5], got {options.val_fraction}", "pass e.g. --val_fraction 0.1"
        )
    workers = options.num_workers
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(
            f"num_workers must be a positive integer, got {workers!r}", "pass e.g. 4, or leave it unset to use all cores"
        )
    loaded = Tokenizer.load(options.tokenizer_path) if options.tokenizer_path else None
    if loaded is None:
        check_tokenizer_args(options.tokenizer, options.vocab_size, extra_ids=options.extra_ids)
    _check_out(out, options.overwrite)
    return loaded


def _read_documents(data: str, options: PrepareOptions) -> list[str]:
    docs = read_documents(data, text_field=options.text_field, column=options.column)
    if options.clean:
        docs = clean_documents(docs)
        if not docs:
            raise DataError(f"no text left in {data} after cleaning", "check that the input holds readable text")
    return docs


def _encode_splits(
    folder: Path, splits: dict[str, list[str]], tok: Tokenizer, options: PrepareOptions
) -> dict[str, int]:
    """Write ``folder/<split>.bin`` for every split; returns the token count of each."""
    dtype = token_dtype(tok.vocab_size)
    counts = {}
    with Encoder(tok, options.num_workers) as encode:
        for split, pieces in splits.items():
            path = folder / f"{split}.bin"
            counts[split] = write_split(path, pieces, tok, encode, dtype, f"encode {split}", options.progress)
    if counts["train"] == 0:
        raise DataError("the training split holds no tokens", "pass more text")
    if counts["val"] == 0:
        raise DataError("the validation split holds no tokens", "use a larger val_fraction or more data")
    return counts


def _dataset_meta(data: str, docs: list[str], splits: dict[str, list[str]], tok: Tokenizer, counts: dict[str, int],
                  options: PrepareOptions) -> dict:
    train_pieces, val_pieces = splits["train"], splits["val"]
    return {
        "format": FORMAT,
        "dtype": token_dtype(tok.vocab_size).name,
        "vocab_size": tok.vocab_size,
        "tokenizer": tok.kind,
        "eos_id": tok.eos_id,
        "pad_id": tok.pad_id,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "train_bytes": sum(len(p.encode("utf-8")) for p in train_pieces),
        "val_bytes": sum(len(p.encode("utf-8")) for p in val_pieces),
        "train_chars": sum(map(len, train_pieces)),
        "val_chars": sum(map(len, val_pieces)),
        "num_documents": len(docs),
        "split": "documents" if len(docs) >= MIN_DOCUMENTS_FOR_DOCUMENT_SPLIT else "characters",
        "source": str(data),
        "val_fraction": options.val_fraction,
        "seed": options.seed,
        "clean": options.clean,
    }


@contextmanager
def _staging_folder(out: Path) -> Iterator[Path]:
    """A fresh folder beside ``out`` that becomes ``out`` when the block succeeds and vanishes when it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
    elif not any(out.iterdir()):
        out.rmdir()
        os.replace(tmp, out)
    else:  # overwrite: swap, then delete the old copy
        old = out.parent / f"{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)

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
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from lmforge.atomic import write_bytes_atomic, write_json_atomic
from lmforge.data.clean import clean_documents
from lmforge.data.sources import read_documents
from lmforge.data.tokenizers import Tokenizer, check_tokenizer_args, train_tokenizer
from lmforge.errors import ConfigError, DataError

FORMAT = "lmforge-tokens-v1"
SPLITS = ("train", "val")
# Below this many documents a per-document split is too coarse, so the text is cut by characters.
MIN_DOCUMENTS_FOR_DOCUMENT_SPLIT = 20
_ENCODE_CHUNK_CHARS = 1 << 14
_BATCH_CHARS = 1 << 18
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


# ----------------------------------------------------------------------------- encoding

# A single space between two non-spaces is a token boundary for every tokenizer kind
# (byte-level BPE, Metaspace, BERT and per-character pre-tokenizers), so cutting long
# documents there lets them be encoded in parallel without changing their tokens.
_SAFE_CUT = re.compile(r"(?<=\S) (?=\S)")


def _chunks(text: str) -> Iterator[str]:
    start = 0
    while len(text) - start > _ENCODE_CHUNK_CHARS:
        m = _SAFE_CUT.search(text, start + _ENCODE_CHUNK_CHARS)
        if m is None:
            break
        yield text[start : m.start()]
        start = m.start()
    yield text[start:]


def _batches(pieces: Sequence[str]) -> Iterator[list[tuple[str, bool]]]:
    """Group (chunk, ends_a_piece) pairs into batches of about ``_BATCH_CHARS`` characters."""
    batch: list[tuple[str, bool]] = []
    size = 0
    for piece in pieces:
        chunks = list(_chunks(piece))
        for i, chunk in enumerate(chunks):
            batch.append((chunk, i == len(chunks) - 1))
            size += len(chunk)
            if size >= _BATCH_CHARS:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


class _Encoder:
    """Batch encoder; ``num_workers=None`` uses the tokenizer library's own thread pool.

    An explicit worker count turns that pool off for the duration and runs that many
    Python threads instead (encoding releases the GIL).
    """

    def __init__(self, tok: Tokenizer, num_workers: int | None):
        self._encode_batch = getattr(tok.hf, "encode_batch_fast", tok.hf.encode_batch)  # fast: skips offsets
        self.num_workers = num_workers
        self._pool: ThreadPoolExecutor | None = None
        self._saved_env: str | None = None

    def __enter__(self) -> "_Encoder":
        if self.num_workers is not None:
            self._saved_env = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            if self.num_workers > 1:
                self._pool = ThreadPoolExecutor(self.num_workers)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        if self.num_workers is not None:
            if self._saved_env is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = self._saved_env

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._encode_batch(texts, add_special_tokens=False)]

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self._pool is None:
            return self._encode(texts)
        step = -(-len(texts) // self.num_workers)
        parts = self._pool.map(self._encode, [texts[i : i + step] for i in range(0, len(texts), step)])
        return [ids for part in parts for ids in part]


def _write_split(path: Path, pieces: Sequence[str], tok: Tokenizer, encode: _Encoder, dtype: np.dtype,
                 desc: str, progress: bool) -> int:
    from tqdm.auto import tqdm

    n_tokens = 0
    eos = np.array([tok.eos_id], dtype=dtype)
    pieces_left = len(pieces)
    total_chars = sum(map(len, pieces))
    with open(path, "wb") as f, tqdm(total=total_chars, desc=desc, unit="char", unit_scale=True,
                                      disable=not progress) as bar:
        for batch in _batches(pieces):
            for (_, ends_piece), ids in zip(batch, encode([text for text, _ in batch])):
                arr = np.asarray(ids, dtype=dtype)
                f.write(arr.tobytes())
                n_tokens += arr.size
                if ends_piece:
                    pieces_left -= 1
                    if pieces_left:
                        f.write(eos.tobytes())
                        n_tokens += 1
            bar.update(sum(len(text) for text, _ in batch))
        f.flush()
        os.fsync(f.fileno())
    return n_tokens


# ----------------------------------------------------------------------------- prepare


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} is a file", "choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"output directory {out} already exists", "pass --overwrite or choose another --out")


def prepare_dataset(
    data: str,
    out: str | os.PathLike,
    *,
    tokenizer: str = "bpe",
    vocab_size: int = 8192,
    val_fraction: float = 0.1,
    seed: int = 1337,
    text_field: str = "text",
    column: str | None = None,
    tokenizer_path: str | None = None,
    overwrite: bool = False,
    num_workers: int | None = None,
    progress: bool = True,
    clean: bool = True,
    extra_ids: int = 0,
) -> dict:
    """Turn raw text into a tokenized dataset folder ``out``; returns its metadata.

    Reads ``data`` (see :func:`~lmforge.data.sources.read_documents`), cleans and
    de-duplicates it (``clean=False`` keeps the text byte for byte), splits it into
    train/validation (:func:`split_documents`), trains a ``tokenizer`` of
    ``vocab_size`` on the training split only - or loads ``tokenizer_path`` - and
    writes ``train.bin``, ``val.bin``, ``tokenizer.json`` and ``meta.json``.
    ``num_workers`` sets the encoding threads (default: all cores). ``extra_ids`` gives a trained
    tokenizer that many T5 sentinel tokens (see :func:`~lmforge.data.tokenizers.train_tokenizer`).
    """
    out = Path(out).expanduser()
    if not 0 < val_fraction <= 0.5:
        raise ConfigError(f"val_fraction must be in (0, 0.5], got {val_fraction}", "pass e.g. --val_fraction 0.1")
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1):
        raise ConfigError(f"num_workers must be a positive integer, got {num_workers!r}", "pass e.g. 4, or leave it unset to use all cores")
    loaded = Tokenizer.load(tokenizer_path) if tokenizer_path else None
    if loaded is None:
        check_tokenizer_args(tokenizer, vocab_size, extra_ids=extra_ids)
    _check_out(out, overwrite)

    docs = read_documents(data, text_field=text_field, column=column)
    if clean:
        docs = clean_documents(docs)
        if not docs:
            raise DataError(f"no text left in {data} after cleaning", "check that the input holds readable text")
    train_pieces, val_pieces = split_documents(docs, val_fraction, seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        tok = loaded or train_tokenizer(tokenizer, train_pieces, vocab_size, extra_ids=extra_ids)
        dtype = token_dtype(tok.vocab_size)
        counts = {}
        with _Encoder(tok, num_workers) as encode:
            for split, pieces in (("train", train_pieces), ("val", val_pieces)):
                counts[split] = _write_split(tmp / f"{split}.bin", pieces, tok, encode, dtype, f"encode {split}", progress)
        if counts["train"] == 0:
            raise DataError("the training split holds no tokens", "pass more text")
        if counts["val"] == 0:
            raise DataError("the validation split holds no tokens", "use a larger val_fraction or more data")
        tok.save(tmp / "tokenizer.json")
        meta = {
            "format": FORMAT,
            "dtype": dtype.name,
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
            "val_fraction": val_fraction,
            "seed": seed,
            "clean": clean,
        }
        write_json_atomic(tmp / "meta.json", meta)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


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

"""Encoding text pieces into a flat token file, fast.

Long documents are cut where every tokenizer kind has a token boundary, so the cuts never
change the tokens, and the chunks are encoded in parallel batches.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from lmforge.data.tokenizers import Tokenizer

_ENCODE_CHUNK_CHARS = 1 << 14
_BATCH_CHARS = 1 << 18

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


class Encoder:
    """Batch encoder; ``num_workers=None`` uses the tokenizer library's own thread pool.

    An explicit worker count turns that pool off for the duration and runs that many
    Python threads instead (encoding releases the GIL).
    """

    def __init__(self, tok: Tokenizer, num_workers: int | None):
        self._encode_batch = getattr(tok.hf, "encode_batch_fast", tok.hf.encode_batch)  # fast: skips offsets
        self.num_workers = num_workers
        self._pool: ThreadPoolExecutor | None = None
        self._saved_env: str | None = None

    def __enter__(self) -> "Encoder":
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


def write_split(path: Path, pieces: Sequence[str], tok: Tokenizer, encode: Encoder, dtype: np.dtype,
                 desc: str, progress: bool) -> int:
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

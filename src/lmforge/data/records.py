"""Rows and records of structured text files: JSON Lines, JSON, CSV/TSV and Parquet.

These readers parse; they do not decide what a row means. Corpus sources
(:mod:`lmforge.data.sources`) and the task-data formats (:mod:`lmforge.data.formats`)
both build on them, each wording its own errors for its users: a syntax error comes
back as :class:`MalformedText`, which says where in the text it is.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.errors import DataError

# Documents and long answers are often far longer than csv's default 128 KiB cell limit.
_MAX_CELL_CHARS = 2**31 - 1


class MalformedText(ValueError):
    """A syntax error at ``line`` (1-based; ``column`` too where the parser knows it)."""

    def __init__(self, reason: str, line: int, column: int | None = None):
        super().__init__(reason)
        self.reason, self.line, self.column = reason, line, column


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting a bad value in an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def numbered_lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line) pairs without line terminators.

    Split on ``\\n`` only: ``str.splitlines`` also breaks at characters such as U+2028
    and U+001C, which can occur inside a sentence and would shift every line number.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [(i, line.rstrip("\r")) for i, line in enumerate(lines, 1)]


def jsonl_records(text: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line of JSON Lines text, parsed as it is reached."""
    for lineno, line in numbered_lines(text):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise MalformedText(e.msg, lineno, e.colno) from None
        yield lineno, value


def json_document(text: str) -> Any:
    """The one JSON value ``text`` holds."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MalformedText(e.msg, e.lineno, e.colno) from None


def delimited_rows(text: str, delimiter: str = ",") -> list[tuple[int, list[str]]]:
    """(line the row starts on, cells) for every row of quoted CSV-style text, blank rows included.

    A quoted cell may hold line breaks, so a row can span several lines.
    """
    rows = []
    old_limit = csv.field_size_limit()
    csv.field_size_limit(_MAX_CELL_CHARS)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 1
    try:
        for cells in reader:
            rows.append((start, cells))
            start = reader.line_num + 1
    except csv.Error as e:
        raise MalformedText(str(e), reader.line_num) from None
    finally:
        csv.field_size_limit(old_limit)
    return rows


def tab_rows(text: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) for every non-blank line, cut at tabs with no quote handling
    (Chinese text often holds literal ``"`` characters that are not quotes)."""
    return [(n, line.split("\t")) for n, line in numbered_lines(text) if line.strip()]


def parquet_column(path: Path, column: str) -> list[Any]:
    """The values of one column of a Parquet file."""
    import pyarrow as pa  # heavy; only Parquet input needs it
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"{path} is not a readable Parquet file ({e})", "re-export it as Parquet or use .jsonl/.csv"
        ) from None
    if column not in names:
        raise DataError(
            f"{path}: no column {column!r} (columns: {', '.join(map(repr, names))})",
            "set the text column to one of those columns",
        )
    return pq.read_table(path, columns=[column]).column(column).to_pylist()

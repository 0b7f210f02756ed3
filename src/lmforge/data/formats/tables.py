"""``tsv`` and ``csv``: tables whose cells are found by header name or, without a header, by position.

TSV cells are split on tabs with no quote handling (Chinese reviews contain literal ``"``);
CSV uses standard quoting. Every row must have as many cells as the header (or the first row).
"""
from __future__ import annotations

from typing import Any

from lmforge.data.formats.examples import examples_from_records, text_example
from lmforge.data.formats.options import Example, Field
from lmforge.data.formats.registry import BY_CONTENT, BY_SUFFIX, register_format
from lmforge.data.formats.source import TaskFile
from lmforge.data.records import MalformedText, delimited_rows, tab_rows
from lmforge.errors import ConfigError, DataError

TABLE_TASKS = ("classify", "seq2seq")


def _csv_suffix(file: TaskFile) -> bool:
    return file.suffix == ".csv"


def _tsv_suffix(file: TaskFile) -> bool:
    return file.suffix == ".tsv" and file.task != "ner"  # NER's .tsv files hold CoNLL columns


def _tab_separated(file: TaskFile) -> bool:
    return "\t" in file.sample[0]


@register_format("tsv", tasks=TABLE_TASKS, claims=[(BY_SUFFIX, _tsv_suffix), (BY_CONTENT + 3, _tab_separated)])
def read_tsv(file: TaskFile) -> list[Example]:
    return _read_table(file, tab_rows(file.text()), "tab")


@register_format("csv", tasks=TABLE_TASKS, claims=[(BY_SUFFIX, _csv_suffix)])
def read_csv(file: TaskFile) -> list[Example]:
    try:
        rows = delimited_rows(file.text())
    except MalformedText as e:
        raise DataError(f"{file.path}, line {e.line}: bad CSV ({e.reason})", "check the quoting on that line") from None
    return _read_table(file, [(n, cells) for n, cells in rows if any(c.strip() for c in cells)], "comma")


def _read_table(file: TaskFile, rows: list[tuple[int, list[str]]], sep: str) -> list[Example]:
    """Examples from the non-blank ``(line number, cells)`` rows of a table whose cells ``sep`` separates."""
    if not rows:
        raise DataError(f"{file.path} is empty", "pass a file that holds examples")
    first = [c.strip() for c in rows[0][1]]
    header = _has_header(file, first)
    width = len(rows[0][1])
    for lineno, cells in rows[1:]:
        if len(cells) != width:
            raise DataError(
                f"{file.path}, line {lineno}: {len(cells)} columns, expected {width} like line {rows[0][0]}",
                f"every row needs {width} {sep}-separated cells; a stray {sep} inside a text splits it",
            )
    body = rows[1:] if header else rows
    if file.options.columns is None and header:
        records = [(f"line {n}", dict(zip(first, (c.strip() for c in cells)))) for n, cells in body]
        return examples_from_records(file, records)
    return _from_positions(file, body)


def _has_header(file: TaskFile, first: list[str]) -> bool:
    """Whether the first row is a header: as configured, or when it holds a field name."""
    if file.options.header is not None:
        return file.options.header
    header = any(name in first for f in file.fields for name in f.names)
    # Configured names only make sense with a header: rather than read the header
    # row as data, say which name was not found.
    configured = [f.names[0] for f in file.fields if f.configured]
    if not header and file.options.columns is None and configured:
        wanted = ", ".join(map(repr, configured))
        raise DataError(
            f"{file.path}: the first line is not a header holding {wanted} (it has {', '.join(map(repr, first))})",
            "fix the field names, or pass columns=[...] (and header=False) for a file without a header",
        )
    return header


def _from_positions(file: TaskFile, rows: list[tuple[int, list[str]]]) -> list[Example]:
    """Examples from a header-less table: ``columns[i]`` is the cell of ``fields[i]``."""
    fields, columns = file.fields, _check_columns(file)
    examples = []
    for lineno, cells in rows:
        values: dict[str, Any] = {}
        for field, col in zip(fields, columns):
            if col < len(cells):
                values[field.key] = cells[col].strip()
            elif field.role == "label" and not file.require_labels:
                values[field.key] = None
            else:
                raise DataError(
                    f"{file.path}, line {lineno}: no column {col} for {field.key} (the line has {len(cells)} columns)",
                    "fix columns=[...] or the line",
                )
        values.update({f.key: None for f in fields[len(columns):]})
        examples.append(text_example(file, f"line {lineno}", values))
    return examples


def _check_columns(file: TaskFile) -> list[int]:
    """The configured column of each field (the first ones by default); the label's may be left out."""
    fields: list[Field] = file.fields
    columns = file.options.columns
    if columns is None:
        columns = list(range(len(fields)))
    if len(columns) not in (len(fields), len(fields) - 1) or any(not isinstance(c, int) or c < 0 for c in columns):
        keys = ", ".join(f.key for f in fields)
        raise ConfigError(
            f"columns={columns!r} does not fit the fields {keys}", f"pass one non-negative index per field: {keys}"
        )
    if len(columns) < len(fields) and file.require_labels:
        raise ConfigError(
            f"columns={columns!r} has no {fields[-1].key} column",
            f"add the {fields[-1].key} column index, or pass require_labels=False to read unlabelled text",
        )
    return columns

"""Read labelled task data into plain example dicts, carve validation splits, convert NER tags.

``read_examples`` turns one file (two for parallel text) into a list of dicts whose
shape depends only on the task, whatever the file format:

=========  ==============================================================================
task       example
=========  ==============================================================================
classify   ``{"text": str, "label": str | None}`` (+ ``"text_pair": str`` when configured)
ner        ``{"tokens": list[str], "tags": list[str] | None}``
qa         ``{"id": str, "question": str, "context": str,
           "answers": [{"text": str, "answer_start": int}, ...]}``
seq2seq    ``{"source": str, "target": str | None}``
chat       ``{"instruction": str, "input": str, "output": str | None}``
=========  ==============================================================================

Formats (``FORMATS``) and the tasks they serve:

* ``label_text`` (classify) - ``<label> <text>`` per line, split at the first whitespace
  (SST-2 ``stsa.binary.*``, TREC ``COARSE:fine question``; the label is kept whole, take
  ``label.split(":")[0]`` for TREC's 6 coarse classes). UTF-8, falling back to latin-1
  when the file is not valid UTF-8 (TREC has one stray byte), unless ``encoding`` is given.
  Blank lines are skipped.
* ``tsv`` / ``csv`` (classify, seq2seq) - with a header row, cells are found by field
  name; without one, by ``columns``. TSV cells are split on tabs with no quote handling
  (Chinese reviews contain literal ``"``); CSV uses standard quoting. Every row must have
  as many cells as the header (or as the first row).
* ``conll`` (ner) - whitespace-separated columns, token in column 0, tag in
  ``tag_column`` (default: last); a blank line ends a sentence; ``-DOCSTART-`` lines are
  dropped. ``bmes`` (ner) - the same with exactly ``char tag`` per line.
* ``squad`` (qa) - SQuAD v1.1 JSON; one example per question, every answer kept (extra
  answer keys such as DRCD's ``id`` are dropped). Answer offsets are kept as given.
* ``parallel`` (seq2seq) - ``path`` is the source file and ``target_path`` the
  line-aligned target file.
* ``jsonl`` / ``json`` (every task) - one object per line / a JSON array of objects.
* ``alpaca`` (chat) - a JSON array of ``{"instruction", "input", "output"}``; a missing
  ``input`` reads as ``""``.

Field names. A field left as ``None`` is looked up among these names, first match wins:

* classify: text ``text``, ``text_a``, ``sentence``; label ``label``; ``text_pair`` only
  when ``text_pair_field`` is given.
* seq2seq: source ``source``, ``src``, ``dialogue``, ``document``; target ``target``,
  ``tgt``, ``summary`` (so DialogSum JSONL needs no configuration).
* ner (JSON): tokens ``tokens``, ``words`` (or ``text_field``); tags ``tags``,
  ``ner_tags``, ``labels`` (or ``label_field``).
* qa (JSON records): ``id`` (optional), ``question``, ``context``, ``answers``.
* chat: ``instruction``, ``input`` (optional), ``output``.

Header-less TSV/CSV files are read by position: ``columns`` lists the column indices of
the fields in order - classify ``[text, label]`` or ``[text, text_pair, label]``, seq2seq
``[source, target]`` - and defaults to ``[0, 1]`` (``[0, 1, 2]`` with a text pair). That
fits TNEWS (``sentence<TAB>label_desc``) and Tatoeba (``English<TAB>Chinese<TAB>...``).
Leaving the label column out (``columns=[0]``) reads unlabelled text, one per line; this
is also the way to read plain-text prediction input for classification.

With ``require_labels=False`` (prediction input) labels, tags, targets, outputs and
answers may be absent and read as ``None`` (``[]`` for answers); when present they are
still read.

Every problem with a file raises ``DataError`` on one line that names the file (and the
line or record) and says how to fix it; bad arguments raise ``ConfigError``.

``carve_split`` carves a deterministic validation split; ``tags_to_spans``,
``spans_to_tags`` and ``convert_tags`` move NER labels between tagging schemes.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, DataError

TASKS = ("classify", "ner", "qa", "seq2seq", "chat")
FORMATS = ("label_text", "tsv", "csv", "conll", "bmes", "squad", "parallel", "jsonl", "json", "alpaca")
SCHEMES = ("IOB1", "IOB2", "BIO", "BMES", "BIOES")

# Which formats can hold which task's examples.
_TASK_FORMATS: dict[str, tuple[str, ...]] = {
    "classify": ("label_text", "tsv", "csv", "jsonl", "json"),
    "ner": ("conll", "bmes", "jsonl", "json"),
    "qa": ("squad", "jsonl", "json"),
    "seq2seq": ("parallel", "tsv", "csv", "jsonl", "json"),
    "chat": ("alpaca", "jsonl", "json"),
}

Example = dict[str, Any]
PathLike = str | os.PathLike


# ----------------------------------------------------------------------------- fields


@dataclass(frozen=True)
class _Field:
    """One key of an example and the names it may have in the file."""

    key: str
    names: tuple[str, ...]
    role: str  # "required", "label" (may be absent at prediction time) or "optional"
    configured: bool = False  # named by the caller rather than taken from the defaults


def _fields(
    task: str,
    text_field: str | None,
    text_pair_field: str | None,
    label_field: str | None,
    source_field: str | None,
    target_field: str | None,
) -> list[_Field]:
    def field(key: str, configured: str | None, defaults: tuple[str, ...], role: str) -> _Field:
        if configured is not None:
            return _Field(key, (configured,), role, configured=True)
        return _Field(key, defaults, role)

    if task == "classify":
        fields = [field("text", text_field, ("text", "text_a", "sentence"), "required")]
        if text_pair_field is not None:
            fields.append(field("text_pair", text_pair_field, (), "required"))
        return fields + [field("label", label_field, ("label",), "label")]
    if task == "seq2seq":
        return [
            field("source", source_field, ("source", "src", "dialogue", "document"), "required"),
            field("target", target_field, ("target", "tgt", "summary"), "label"),
        ]
    if task == "ner":
        return [
            field("tokens", text_field, ("tokens", "words"), "required"),
            field("tags", label_field, ("tags", "ner_tags", "labels"), "label"),
        ]
    if task == "qa":
        return [
            _Field("id", ("id",), "optional"),
            _Field("question", ("question",), "required"),
            _Field("context", ("context",), "required"),
            _Field("answers", ("answers",), "label"),
        ]
    return [  # chat
        _Field("instruction", ("instruction",), "required"),
        _Field("input", ("input",), "optional"),
        _Field("output", ("output",), "label"),
    ]


# ----------------------------------------------------------------------------- entry point


def read_examples(
    path: PathLike,
    *,
    task: str,
    format: str = "auto",
    target_path: PathLike | None = None,
    text_field: str | None = None,
    text_pair_field: str | None = None,
    label_field: str | None = None,
    source_field: str | None = None,
    target_field: str | None = None,
    columns: list[int] | None = None,
    header: bool | None = None,
    tag_column: int = -1,
    encoding: str | None = None,
    require_labels: bool = True,
) -> list[Example]:
    """Read the examples of ``task`` from ``path`` (see the module docstring for formats).

    ``format="auto"`` decides from the extension, then the content: ``.json`` holding an
    object with ``"data"`` is SQuAD, an array of objects with ``"instruction"`` is Alpaca,
    other JSON is ``json``; ``.jsonl`` is JSON Lines; ``.csv``/``.tsv`` are tables (for NER,
    ``.tsv`` is read as CoNLL columns); ``.bmes`` is BMES; a ``target_path`` means parallel
    text. Other files are sniffed: NER files are ``bmes`` when they have two columns of
    B-/M-/E-/S-/O tags and ``conll`` otherwise; a first line holding a tab is ``tsv``; a
    line starting with ``{`` is JSON Lines; other classification files are ``label_text``
    and other seq2seq files are a source-only ``parallel`` file (only with
    ``require_labels=False``).

    ``header=None`` detects a header: the first row is one when it contains a field name
    (configured or default). When a field name is configured and no ``columns`` are given,
    the file must have a header holding it. ``tag_column`` picks the CoNLL tag column
    (negative counts from the end). ``encoding`` overrides UTF-8 (and label_text's latin-1
    fallback). Missing labels are an error unless ``require_labels=False``.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}", f"use one of {', '.join(TASKS)}")
    if format != "auto" and format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}", f"use 'auto' or one of {', '.join(FORMATS)}")
    path = _existing_file(path)
    target = _existing_file(target_path) if target_path is not None else None
    fields = _fields(task, text_field, text_pair_field, label_field, source_field, target_field)

    parsed_json: Any = None
    if format == "auto":
        format, parsed_json = _detect_format(path, task, target, encoding, require_labels)
    if format not in _TASK_FORMATS[task]:
        raise ConfigError(
            f"format {format!r} cannot hold {task} examples ({path})",
            f"for task {task!r} use one of {', '.join(_TASK_FORMATS[task])}",
        )
    if target is not None and format != "parallel":
        raise ConfigError(f"target_path is only used by the parallel format, not {format!r}", "drop target_path")

    if format == "label_text":
        examples = _read_label_text(path, encoding, require_labels)
    elif format in ("tsv", "csv"):
        examples = _read_table(path, format, task, fields, columns, header, encoding, require_labels)
    elif format in ("conll", "bmes"):
        examples = _read_conll(path, format, tag_column, encoding, require_labels)
    elif format == "parallel":
        examples = _read_parallel(path, target, encoding, require_labels)
    elif format == "jsonl":
        records = _jsonl_records(path, encoding)
        examples = _from_records(path, records, fields, task, require_labels)
    else:  # squad, json, alpaca: one JSON document
        obj = parsed_json if parsed_json is not None else _load_json(path, encoding)
        if format == "squad":
            examples = _squad_examples(path, obj, require_labels)
        else:
            examples = _from_records(path, _array_records(path, obj, format), fields, task, require_labels)
    if not examples:
        raise DataError(f"no examples in {path}", f"check that the file holds {task} data in the {format} format")
    return examples


# ----------------------------------------------------------------------------- files and text


def _existing_file(path: PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p} does not exist", "check the path (relative paths start at the current directory)")
    if not p.is_file():
        raise DataError(f"{p} is not a file", "pass the data file itself, not a folder")
    return p


def _read_text(path: Path, encoding: str | None, *, latin1_fallback: bool = False) -> str:
    """The decoded file; ``utf-8-sig`` so a byte-order mark never sticks to the first cell."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}", "check the file's permissions") from None
    if not data.strip():
        raise DataError(f"{path} is empty", "pass a file that holds examples")
    try:
        return data.decode(encoding or "utf-8-sig")
    except LookupError:
        raise ConfigError(
            f"unknown encoding {encoding!r}", "pass a Python codec name such as 'utf-8' or 'gbk'"
        ) from None
    except UnicodeDecodeError as e:
        if latin1_fallback and encoding is None:
            return data.decode("latin-1")  # every byte is valid latin-1: TREC's stray 0xF0
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}, line {line}: not valid {encoding or 'UTF-8'} (byte {data[e.start]:#04x})",
            "pass encoding= with the file's real encoding (e.g. 'gbk', 'latin-1') or re-save it as UTF-8",
        ) from None


def _lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line) pairs without line terminators.

    Split on ``\\n`` only: ``str.splitlines`` also breaks at characters such as U+2028
    and U+001C, which can occur inside a sentence and would shift every line number.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [(i, line.rstrip("\r")) for i, line in enumerate(lines, 1)]


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- format detection


def _detect_format(
    path: Path, task: str, target: Path | None, encoding: str | None, require_labels: bool
) -> tuple[str, Any]:
    """The format of ``path`` and, for ``.json`` files, the already parsed document."""
    if target is not None:
        return "parallel", None
    suffix = path.suffix.lower()
    if suffix == ".json":
        obj = _load_json(path, encoding)
        if isinstance(obj, dict) and "data" in obj:
            return "squad", obj
        if isinstance(obj, list) and obj and isinstance(obj[0], dict) and "instruction" in obj[0]:
            return "alpaca", obj
        return "json", obj
    if suffix == ".jsonl":
        return "jsonl", None
    if suffix == ".bmes":
        return "bmes", None
    if suffix == ".csv" or (suffix == ".tsv" and task != "ner"):
        return suffix[1:], None

    sample = [line for _, line in _lines(_read_text(path, encoding, latin1_fallback=True)[:65536])]
    nonblank = [line for line in sample if line.strip()]
    if not nonblank:
        raise DataError(f"{path} is empty", "pass a file that holds examples")
    if task == "ner":
        return ("bmes" if _looks_bmes(nonblank) else "conll"), None
    if nonblank[0].lstrip().startswith("{"):
        return "jsonl", None
    if "\t" in nonblank[0]:
        return "tsv", None
    if task == "classify":
        return "label_text", None
    if task == "seq2seq" and not require_labels:
        return "parallel", None
    raise DataError(
        f"cannot tell the format of {path}",
        f"pass format= (one of {', '.join(_TASK_FORMATS[task])})"
        + (" or target_path= for line-aligned parallel files" if task == "seq2seq" else ""),
    )


_BMES_TAG = re.compile(r"O|[BMES]-\S+")


def _looks_bmes(lines: list[str]) -> bool:
    rows = [_split_columns(line) for line in lines if not line.startswith("-DOCSTART-")]
    if not rows or any(len(row) != 2 for row in rows):
        return False
    tags = [row[1] for row in rows]
    # M- only exists in BMES; E-/S- alone could be BIOES, which has I- instead of M-.
    return all(_BMES_TAG.fullmatch(t) for t in tags) and any(t[0] in "MES" for t in tags)


# ----------------------------------------------------------------------------- label_text


def _read_label_text(path: Path, encoding: str | None, require_labels: bool) -> list[Example]:
    examples = []
    for lineno, line in _lines(_read_text(path, encoding, latin1_fallback=True)):
        parts = line.strip().split(None, 1)
        if not parts:
            continue
        if len(parts) == 1:
            raise DataError(
                f"{path}, line {lineno}: expected '<label> <text>' but found one word {_short(parts[0])}",
                "put the label, a space, then the text on every line; for unlabelled text, one per line, "
                "use format='tsv' with columns=[0]",
            )
        examples.append({"text": parts[1].strip(), "label": parts[0]})
    return examples


# ----------------------------------------------------------------------------- tsv / csv


def _table_rows(path: Path, kind: str, encoding: str | None) -> list[tuple[int, list[str]]]:
    """(line number, cells) for every non-blank row."""
    text = _read_text(path, encoding)
    if kind == "tsv":
        return [(n, line.split("\t")) for n, line in _lines(text) if line.strip()]
    rows = []
    reader = csv.reader(io.StringIO(text, newline=""))
    start = 1
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                rows.append((start, cells))
            start = reader.line_num + 1  # a quoted cell may span several lines
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: bad CSV ({e})", "check the quoting on that line") from None
    return rows


def _read_table(
    path: Path,
    kind: str,
    task: str,
    fields: list[_Field],
    columns: list[int] | None,
    header: bool | None,
    encoding: str | None,
    require_labels: bool,
) -> list[Example]:
    rows = _table_rows(path, kind, encoding)
    if not rows:
        raise DataError(f"{path} is empty", "pass a file that holds examples")
    first = [c.strip() for c in rows[0][1]]
    if header is None:
        header = any(name in first for f in fields for name in f.names)
        # Configured names only make sense with a header: rather than read the header
        # row as data, say which name was not found.
        configured = [f.names[0] for f in fields if f.configured]
        if not header and columns is None and configured:
            wanted = ", ".join(map(repr, configured))
            raise DataError(
                f"{path}: the first line is not a header holding {wanted} (it has {', '.join(map(repr, first))})",
                "fix the field names, or pass columns=[...] (and header=False) for a file without a header",
            )
    width = len(rows[0][1])
    for lineno, cells in rows[1:]:
        if len(cells) != width:
            sep = "tab" if kind == "tsv" else "comma"
            raise DataError(
                f"{path}, line {lineno}: {len(cells)} columns, expected {width} like line {rows[0][0]}",
                f"every row needs {width} {sep}-separated cells; a stray {sep} inside a text splits it",
            )
    body = rows[1:] if header else rows
    if columns is None and header:
        records = [(f"line {n}", dict(zip(first, (c.strip() for c in cells)))) for n, cells in body]
        return _from_records(path, records, fields, task, require_labels)
    return _from_positions(path, body, fields, columns, require_labels)


def _from_positions(
    path: Path,
    rows: list[tuple[int, list[str]]],
    fields: list[_Field],
    columns: list[int] | None,
    require_labels: bool,
) -> list[Example]:
    """Examples from a header-less table: ``columns[i]`` is the cell of ``fields[i]``."""
    if columns is None:
        columns = list(range(len(fields)))
    if len(columns) not in (len(fields), len(fields) - 1) or any(not isinstance(c, int) or c < 0 for c in columns):
        keys = ", ".join(f.key for f in fields)
        raise ConfigError(
            f"columns={columns!r} does not fit the fields {keys}", f"pass one non-negative index per field: {keys}"
        )
    if len(columns) < len(fields) and require_labels:
        raise ConfigError(
            f"columns={columns!r} has no {fields[-1].key} column",
            f"add the {fields[-1].key} column index, or pass require_labels=False to read unlabelled text",
        )
    examples = []
    for lineno, cells in rows:
        values: dict[str, Any] = {}
        for field, col in zip(fields, columns):
            if col < len(cells):
                values[field.key] = cells[col].strip()
            elif field.role == "label" and not require_labels:
                values[field.key] = None
            else:
                raise DataError(
                    f"{path}, line {lineno}: no column {col} for {field.key} (the line has {len(cells)} columns)",
                    "fix columns=[...] or the line",
                )
        values.update({f.key: None for f in fields[len(columns):]})
        examples.append(_clean_text_values(path, f"line {lineno}", values, fields, require_labels))
    return examples


# ----------------------------------------------------------------------------- JSON / JSON Lines


def _load_json(path: Path, encoding: str | None) -> Any:
    try:
        return json.loads(_read_text(path, encoding))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})", "fix the JSON syntax there") from None


def _jsonl_records(path: Path, encoding: str | None) -> list[tuple[str, Any]]:
    records = []
    for lineno, line in _lines(_read_text(path, encoding)):
        if not line.strip():
            continue
        try:
            records.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}, line {lineno}: invalid JSON ({e.msg})",
                "JSON Lines needs one complete JSON object per line",
            ) from None
    return records


def _array_records(path: Path, obj: Any, format: str) -> list[tuple[str, Any]]:
    if not isinstance(obj, list):
        found = f"an object with keys {', '.join(map(repr, obj))}" if isinstance(obj, dict) else type(obj).__name__
        raise DataError(
            f"{path}: expected a JSON array of objects for the {format} format, found {found}",
            "pass a file holding [{...}, {...}] (SQuAD files use format='squad')",
        )
    return [(f"item {i}", record) for i, record in enumerate(obj)]


def _from_records(
    path: Path, records: list[tuple[str, Any]], fields: list[_Field], task: str, require_labels: bool
) -> list[Example]:
    """Examples from dict records; field names are resolved once, on the first record."""
    if not records:
        return []
    for where, record in records:
        if not isinstance(record, dict):
            raise DataError(
                f"{path}, {where}: expected a JSON object, found {type(record).__name__} {_short(record)}",
                "every record must be an object with named fields",
            )
    first_where, first = records[0]
    resolved: dict[str, str | None] = {}
    for field in fields:
        resolved[field.key] = next((n for n in field.names if n in first), None)
        if resolved[field.key] is None and (field.role == "required" or (field.role == "label" and require_labels)):
            raise _missing_field(path, first_where, field, first)
    examples = []
    for where, record in records:
        values: dict[str, Any] = {}
        for field in fields:
            name = resolved[field.key]
            value = record.get(name) if name is not None else None
            if value is None and name is not None and (
                field.role == "required" or (field.role == "label" and require_labels)
            ):
                raise _missing_field(path, where, field, record)
            values[field.key] = value
        if task == "ner":
            examples.append(_ner_record(path, where, values, require_labels))
        elif task == "qa":
            examples.append(_qa_record(path, where, values, len(examples), require_labels))
        else:
            examples.append(_clean_text_values(path, where, values, fields, require_labels))
    return examples


def _missing_field(path: Path, where: str, field: _Field, record: dict) -> DataError:
    wanted = " or ".join(repr(n) for n in field.names)
    have = ", ".join(repr(k) for k in record) or "none"
    hint = "" if field.role != "label" else " (or pass require_labels=False for unlabelled data)"
    return DataError(
        f"{path}, {where}: missing field {wanted} for {field.key} (fields there: {have})",
        f"name the right field with the reader's *_field option{hint}",
    )


def _clean_text_values(
    path: Path, where: str, values: dict[str, Any], fields: list[_Field], require_labels: bool
) -> Example:
    """Check and normalise the string fields of a classify/seq2seq/chat example."""
    out: Example = {}
    for field in fields:
        value = values.get(field.key)
        if field.key == "label":
            # JSON labels may be numbers; a class name is a string either way.
            if isinstance(value, (int, float, bool)):
                value = str(value)
            if value == "":
                value = None
            if value is None and require_labels:
                raise DataError(
                    f"{path}, {where}: empty label", "give every example a label, or pass require_labels=False"
                )
        elif value is None:
            value = "" if field.role == "optional" else None
        if value is not None and not isinstance(value, str):
            raise DataError(
                f"{path}, {where}: {field.key} must be a string, found {type(value).__name__} {_short(value)}",
                f"store {field.key} as a JSON string",
            )
        out[field.key] = value
    return out


def _ner_record(path: Path, where: str, values: dict[str, Any], require_labels: bool) -> Example:
    tokens, tags = values["tokens"], values["tags"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise DataError(
            f"{path}, {where}: tokens must be a list of strings, found {_short(tokens)}",
            'store tokens as ["w1", "w2", ...]',
        )
    if tags is not None:
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise DataError(
                f"{path}, {where}: tags must be a list of tag strings, found {_short(tags)}",
                "store tags as [\"B-PER\", \"O\", ...] (map integer ids to tag names first)",
            )
        if len(tags) != len(tokens):
            raise DataError(
                f"{path}, {where}: {len(tokens)} tokens but {len(tags)} tags", "give every token exactly one tag"
            )
    return {"tokens": tokens, "tags": tags}


def _qa_record(path: Path, where: str, values: dict[str, Any], index: int, require_labels: bool) -> Example:
    for key in ("question", "context"):
        if not isinstance(values[key], str):
            raise DataError(
                f"{path}, {where}: {key} must be a string, found {_short(values[key])}",
                f"store {key} as a JSON string",
            )
    qid = values["id"]
    answers = _answers(path, where, values["answers"], require_labels, impossible=False)
    return {
        "id": str(qid) if qid is not None else str(index),
        "question": values["question"],
        "context": values["context"],
        "answers": answers,
    }


# ----------------------------------------------------------------------------- SQuAD


def _member(path: Path, obj: Any, key: str, kind: type, where: str) -> Any:
    """``obj[key]`` checked to be a ``kind``, or a DataError naming the place in the file."""
    place = f"{path}, {where}" if where else str(path)
    if not isinstance(obj, dict):
        raise DataError(f"{place}: expected a JSON object, found {type(obj).__name__}", "check the SQuAD layout")
    if key not in obj:
        have = ", ".join(repr(k) for k in obj) or "none"
        raise DataError(f"{place}: missing field {key!r} (fields there: {have})", "check the SQuAD layout")
    value = obj[key]
    if not isinstance(value, kind):
        inner = f"{where}.{key}" if where else key
        raise DataError(
            f"{path}, {inner}: expected {kind.__name__}, found {type(value).__name__}", "check the SQuAD layout"
        )
    return value


def _squad_examples(path: Path, obj: Any, require_labels: bool) -> list[Example]:
    if not isinstance(obj, dict) or "data" not in obj:
        found = f"keys {', '.join(map(repr, obj))}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise DataError(
            f"{path}: not SQuAD JSON (expected an object with a 'data' list, found {found})",
            "pass a SQuAD v1.1 file or choose another format=",
        )
    examples = []
    for ai, article in enumerate(_member(path, obj, "data", list, "")):
        for pi, para in enumerate(_member(path, article, "paragraphs", list, f"data[{ai}]")):
            where_p = f"data[{ai}].paragraphs[{pi}]"
            context = _member(path, para, "context", str, where_p)
            for qi, qa in enumerate(_member(path, para, "qas", list, where_p)):
                where = f"{where_p}.qas[{qi}]"
                question = _member(path, qa, "question", str, where)
                qid = qa.get("id")
                examples.append({
                    "id": str(qid) if qid is not None else f"{ai}-{pi}-{qi}",
                    "question": question,
                    "context": context,
                    "answers": _answers(path, where, qa.get("answers"), require_labels, bool(qa.get("is_impossible"))),
                })
    return examples


def _answers(path: Path, where: str, raw: Any, require_labels: bool, impossible: bool) -> list[dict]:
    """SQuAD answers as [{"text", "answer_start"}]; also accepts {"text": [...], "answer_start": [...]}."""
    if raw is None:
        raw = []
    if isinstance(raw, dict):  # the column layout of Hugging Face `datasets`
        texts, starts = raw.get("text"), raw.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataError(
                f"{path}, {where}: answers needs equal-length 'text' and 'answer_start' lists", "fix the answers"
            )
        raw = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
    if not isinstance(raw, list):
        raise DataError(
            f"{path}, {where}: answers must be a list, found {type(raw).__name__}", "store answers as a list"
        )
    answers = []
    for i, answer in enumerate(raw):
        text = answer.get("text") if isinstance(answer, dict) else None
        start = answer.get("answer_start") if isinstance(answer, dict) else None
        if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool):
            raise DataError(
                f"{path}, {where}.answers[{i}]: expected {{'text': str, 'answer_start': int}},"
                f" found {_short(answer)}",
                "fix that answer",
            )
        answers.append({"text": text, "answer_start": start})
    if not answers and require_labels and not impossible:
        raise DataError(
            f"{path}, {where}: question has no answers",
            "add its answers, mark it \"is_impossible\": true, or pass require_labels=False for prediction input",
        )
    return answers


# ----------------------------------------------------------------------------- CoNLL / BMES


def _split_columns(line: str) -> list[str]:
    # Spaces and tabs only: str.split() would also split at U+3000, a valid Chinese token.
    return re.split(r"[ \t]+", line.strip(" \t"))


def _read_conll(
    path: Path, format: str, tag_column: int, encoding: str | None, require_labels: bool
) -> list[Example]:
    sentences: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []
    width: int | None = None
    first_line = 0

    def flush() -> None:
        if tokens:
            sentences.append({"tokens": list(tokens), "tags": list(tags) if tag_index is not None else None})
        tokens.clear()
        tags.clear()

    tag_index: int | None = None
    for lineno, line in _lines(_read_text(path, encoding)):
        if not line.strip(" \t"):
            flush()
            continue
        if line.startswith("-DOCSTART-"):
            flush()  # a document boundary also ends a sentence
            continue
        cells = _split_columns(line)
        if width is None:
            width, first_line = len(cells), lineno
            tag_index = _tag_index(path, lineno, format, cells, tag_column, require_labels)
        elif len(cells) != width:
            raise DataError(
                f"{path}, line {lineno}: {len(cells)} columns, expected {width} like line {first_line}",
                "every token line needs the same columns (token ... tag); a space inside a token splits it",
            )
        tokens.append(cells[0])
        if tag_index is not None:
            tags.append(cells[tag_index])
    flush()
    return sentences


def _tag_index(
    path: Path, lineno: int, format: str, cells: list[str], tag_column: int, require_labels: bool
) -> int | None:
    """The tag's column, or None for token-only prediction input."""
    if format == "bmes" and len(cells) > 2:
        raise DataError(
            f"{path}, line {lineno}: {len(cells)} columns, expected 'char tag'",
            "BMES files hold one character and its tag per line; use format='conll' for more columns",
        )
    if len(cells) == 1:
        if not require_labels:
            return None
        raise DataError(
            f"{path}, line {lineno}: only one column ({_short(cells[0])}), expected 'token ... tag'",
            "separate token and tag with a space or tab, or pass require_labels=False for untagged tokens",
        )
    index = tag_column if tag_column >= 0 else len(cells) + tag_column
    if not 1 <= index < len(cells):
        raise ConfigError(
            f"tag_column={tag_column} does not exist in {path} (line {lineno} has {len(cells)} columns, token in 0)",
            f"pass a tag_column between 1 and {len(cells) - 1}, or -1 for the last",
        )
    return index


# ----------------------------------------------------------------------------- parallel text


def _plain_lines(path: Path, encoding: str | None) -> list[str]:
    lines = [line.strip() for _, line in _lines(_read_text(path, encoding))]
    while lines and not lines[-1]:  # trailing blank lines are editor noise, not sentence pairs
        lines.pop()
    return lines


def _read_parallel(path: Path, target: Path | None, encoding: str | None, require_labels: bool) -> list[Example]:
    sources = _plain_lines(path, encoding)
    if target is None:
        if require_labels:
            raise ConfigError(
                f"the parallel format needs target_path= next to {path}",
                "pass the line-aligned target file, or require_labels=False for source-only input",
            )
        return [{"source": s, "target": None} for s in sources if s]
    targets = _plain_lines(target, encoding)
    if len(sources) != len(targets):
        raise DataError(
            f"{path} has {len(sources)} lines but {target} has {len(targets)}",
            "parallel files must be line-aligned: line i of the target translates line i of the source",
        )
    # A pair blank on both sides carries nothing; dropping both keeps the alignment.
    return [{"source": s, "target": t} for s, t in zip(sources, targets) if s or t]


# ----------------------------------------------------------------------------- validation split


def carve_split(
    examples: Sequence[Example],
    *,
    fraction: float = 0.1,
    how: str = "tail",
    key: Callable[[Example], Any] | None = None,
) -> tuple[list[Example], list[Example]]:
    """Split ``examples`` into ``(train, valid)`` the same way on every run and machine.

    * ``how="tail"``: the last ``round(len * fraction)`` examples are validation (at least
      1 and at most ``len - 1``). Right when the file's order is unbiased, e.g. TNEWS,
      whose README recommends its last 10%.
    * ``how="hash"``: an example is validation when
      ``int(md5(str(key(example)).encode("utf-8")).hexdigest(), 16) % 10_000 < round(fraction * 10_000)``.
      Examples with equal keys always land together, so grouping by passage keeps a
      context out of both splits. The default key is the example's ``context`` (qa),
      ``text`` (classify), ``source`` (seq2seq), ``instruction`` + ``"\\n"`` + ``input``
      (chat) or the space-joined ``tokens`` (ner). Suits CMRC2018, DRCD and TREC.

    Both splits keep the input order. A split that comes out empty raises DataError.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"fraction={fraction} must be between 0 and 1", "pass e.g. fraction=0.1")
    examples = list(examples)
    if how == "tail":
        if len(examples) < 2:
            raise DataError(f"cannot carve a validation split from {len(examples)} example(s)", "use more data")
        n_valid = min(max(round(len(examples) * fraction), 1), len(examples) - 1)
        return examples[: len(examples) - n_valid], examples[len(examples) - n_valid:]
    if how != "hash":
        raise ConfigError(f"unknown split rule how={how!r}", "use how='tail' or how='hash'")
    key = key or _default_key
    threshold = round(fraction * 10_000)
    train, valid = [], []
    for example in examples:
        digest = hashlib.md5(str(key(example)).encode("utf-8"), usedforsecurity=False).hexdigest()
        (valid if int(digest, 16) % 10_000 < threshold else train).append(example)
    if not train or not valid:
        raise DataError(
            f"hash split of {len(examples)} examples left the {'train' if not train else 'validation'} split empty",
            "use more data, another fraction, or how='tail'",
        )
    return train, valid


def _default_key(example: Example) -> str:
    for name in ("context", "text", "source"):
        if name in example:
            return example[name]
    if "instruction" in example:
        return example["instruction"] + "\n" + example.get("input", "")
    if "tokens" in example:
        return " ".join(example["tokens"])
    raise ConfigError(
        f"no default split key for an example with keys {', '.join(example)}", "pass key=lambda ex: ..."
    )


# ----------------------------------------------------------------------------- NER tag schemes

# The prefixes each scheme allows besides the bare "O".
_PREFIXES = {"IOB1": "BI", "IOB2": "BI", "BIOES": "BIES", "BMES": "BMES"}


def _scheme(name: str) -> str:
    canonical = str(name).upper()
    canonical = "IOB2" if canonical == "BIO" else canonical
    if canonical not in _PREFIXES:
        raise ConfigError(f"unknown tag scheme {name!r}", f"use one of {', '.join(SCHEMES)}")
    return canonical


def _parse_tag(tag: Any, position: int, scheme: str) -> tuple[str, str | None]:
    if tag == "O":
        return "O", None
    allowed = _PREFIXES[scheme]
    if not isinstance(tag, str) or len(tag) < 3 or tag[1] != "-" or tag[0] not in allowed:
        forms = ", ".join(f"{p}-TYPE" for p in allowed)
        raise DataError(f"malformed {scheme} tag {_short(tag)} at position {position}", f"{scheme} tags are O, {forms}")
    return tag[0], tag[2:]


def tags_to_spans(tags: Sequence[str], scheme: str) -> list[tuple[str, int, int]]:
    """Entity spans ``(type, start, end_exclusive)`` in order of start.

    Decoding is lenient about sequences, as conlleval is: an I-/M-/E- tag that does not
    continue an entity of its type starts a new one, so model output always decodes.
    A tag that is not valid in ``scheme`` (``X-PER``, ``M-PER`` in IOB2) raises DataError.
    IOB1 and IOB2 decode alike (B- always starts an entity); they differ when encoding.
    """
    scheme = _scheme(scheme)
    spans: list[tuple[str, int, int]] = []
    current: str | None = None
    start = 0
    for i, tag in enumerate(tags):
        prefix, kind = _parse_tag(tag, i, scheme)
        if prefix == "O":
            if current is not None:
                spans.append((current, start, i))
            current = None
            continue
        continues = prefix in "IME" and kind == current
        if not continues:
            if current is not None:
                spans.append((current, start, i))
            current, start = kind, i
        if prefix in "ES":
            spans.append((current, start, i + 1))
            current = None
    if current is not None:
        spans.append((current, start, len(tags)))
    return spans


def spans_to_tags(spans: Sequence[tuple[str, int, int]], n: int, scheme: str) -> list[str]:
    """``n`` tags in ``scheme`` marking ``spans`` (``(type, start, end_exclusive)``).

    IOB1 writes B- only on an entity that directly follows one of the same type; IOB2/BIO
    starts every entity with B-; BIOES/BMES mark single tokens S- and close with E-
    (BMES writes M- inside, BIOES I-). Overlapping or out-of-range spans raise DataError.
    """
    scheme = _scheme(scheme)
    tags = ["O"] * n
    previous: tuple[str, int, int] | None = None
    for span in sorted(spans, key=lambda s: (s[1], s[2])):
        kind, start, end = _check_span(span, n, previous)
        inside = "M" if scheme == "BMES" else "I"
        if scheme in ("BIOES", "BMES"):
            if end - start == 1:
                tags[start] = f"S-{kind}"
            else:
                tags[start:end] = [f"B-{kind}"] + [f"{inside}-{kind}"] * (end - start - 2) + [f"E-{kind}"]
        else:
            adjacent_same = previous is not None and previous[2] == start and previous[0] == kind
            first = "B" if scheme == "IOB2" or adjacent_same else "I"
            tags[start:end] = [f"{first}-{kind}"] + [f"I-{kind}"] * (end - start - 1)
        previous = (kind, start, end)
    return tags


def _check_span(span: Any, n: int, previous: tuple[str, int, int] | None) -> tuple[str, int, int]:
    try:
        kind, start, end = span
    except (TypeError, ValueError):
        raise DataError(f"malformed span {_short(span)}", "spans are (type, start, end_exclusive)") from None
    if not isinstance(kind, str) or not kind or not isinstance(start, int) or not isinstance(end, int):
        raise DataError(f"malformed span {_short(span)}", "spans are (type: str, start: int, end_exclusive: int)")
    if not 0 <= start < end <= n:
        raise DataError(f"span {_short(span)} lies outside 0..{n}", "use 0 <= start < end <= number of tokens")
    if previous is not None and start < previous[2]:
        raise DataError(
            f"spans {previous} and {span} overlap", "tag schemes cannot express nested or overlapping entities"
        )
    return kind, start, end


def convert_tags(tags: Sequence[str], src: str, dst: str) -> list[str]:
    """Re-tag a sentence from scheme ``src`` to ``dst`` (through its entity spans)."""
    return spans_to_tags(tags_to_spans(tags, src), len(tags), dst)

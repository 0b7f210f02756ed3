"""``jsonl`` and ``json``: one object per line, or a JSON array of objects, with named fields."""
from __future__ import annotations

from typing import Any

from lmforge.data.formats.examples import examples_from_records
from lmforge.data.formats.options import TASKS, Example
from lmforge.data.formats.registry import BY_CONTENT, BY_SUFFIX, register_format
from lmforge.data.formats.source import TaskFile
from lmforge.data.records import MalformedText, jsonl_records
from lmforge.errors import DataError


def _jsonl_suffix(file: TaskFile) -> bool:
    return file.suffix == ".jsonl"


def _json_suffix(file: TaskFile) -> bool:
    return file.suffix == ".json"


def _starts_with_object(file: TaskFile) -> bool:
    return file.sample[0].lstrip().startswith("{")


@register_format("jsonl", tasks=TASKS, claims=[(BY_SUFFIX, _jsonl_suffix), (BY_CONTENT + 2, _starts_with_object)])
def read_jsonl(file: TaskFile) -> list[Example]:
    try:
        records = list(jsonl_records(file.text()))
    except MalformedText as e:
        raise DataError(
            f"{file.path}, line {e.line}: invalid JSON ({e.reason})",
            "JSON Lines needs one complete JSON object per line",
        ) from None
    return examples_from_records(file, [(f"line {lineno}", record) for lineno, record in records])


# After squad's and alpaca's claims on .json files: a .json file neither of them takes is an array of records.
@register_format("json", tasks=TASKS, claims=[(BY_SUFFIX + 2, _json_suffix)])
def read_json(file: TaskFile) -> list[Example]:
    return examples_from_records(file, array_records(file, "json"))


def array_records(file: TaskFile, format: str) -> list[tuple[str, Any]]:
    """``(where, record)`` pairs of a file holding a JSON array."""
    obj = file.json_document
    if not isinstance(obj, list):
        found = f"an object with keys {', '.join(map(repr, obj))}" if isinstance(obj, dict) else type(obj).__name__
        raise DataError(
            f"{file.path}: expected a JSON array of objects for the {format} format, found {found}",
            "pass a file holding [{...}, {...}] (SQuAD files use format='squad')",
        )
    return [(f"item {i}", record) for i, record in enumerate(obj)]

"""Examples from records with named fields (JSON objects, table rows under a header), per task."""
from __future__ import annotations

from typing import Any

from lmforge.data.formats.options import Example, Field
from lmforge.data.formats.source import TaskFile
from lmforge.data.records import short_repr
from lmforge.errors import DataError


def examples_from_records(file: TaskFile, records: list[tuple[str, Any]]) -> list[Example]:
    """Examples from ``(where, record)`` pairs; field names are resolved once, on the first record."""
    if not records:
        return []
    for where, record in records:
        if not isinstance(record, dict):
            raise DataError(
                f"{file.path}, {where}: expected a JSON object, found {type(record).__name__} {short_repr(record)}",
                "every record must be an object with named fields",
            )
    first_where, first = records[0]
    resolved: dict[str, str | None] = {}
    for field in file.fields:
        resolved[field.key] = next((n for n in field.names if n in first), None)
        if resolved[field.key] is None and field.needed(file.require_labels):
            raise missing_field(file, first_where, field, first)
    build = _EXAMPLE_BUILDERS.get(file.task, text_example)
    examples = []
    for where, record in records:
        values: dict[str, Any] = {}
        for field in file.fields:
            name = resolved[field.key]
            value = record.get(name) if name is not None else None
            if value is None and name is not None and field.needed(file.require_labels):
                raise missing_field(file, where, field, record)
            values[field.key] = value
        examples.append(build(file, where, values, len(examples)))
    return examples


def missing_field(file: TaskFile, where: str, field: Field, record: dict) -> DataError:
    wanted = " or ".join(repr(n) for n in field.names)
    have = ", ".join(repr(k) for k in record) or "none"
    hint = "" if field.role != "label" else " (or pass require_labels=False for unlabelled data)"
    return DataError(
        f"{file.path}, {where}: missing field {wanted} for {field.key} (fields there: {have})",
        f"name the right field with the reader's *_field option{hint}",
    )


def text_example(file: TaskFile, where: str, values: dict[str, Any], index: int = 0) -> Example:
    """Check and normalise the string fields of a classify/seq2seq/chat example."""
    out: Example = {}
    for field in file.fields:
        value = values.get(field.key)
        if field.key == "label":
            # JSON labels may be numbers; a class name is a string either way.
            if isinstance(value, (int, float, bool)):
                value = str(value)
            if value == "":
                value = None
            if value is None and file.require_labels:
                raise DataError(
                    f"{file.path}, {where}: empty label", "give every example a label, or pass require_labels=False"
                )
        elif value is None:
            value = "" if field.role == "optional" else None
        if value is not None and not isinstance(value, str):
            raise DataError(
                f"{file.path}, {where}: {field.key} must be a string, found {type(value).__name__} {short_repr(value)}",
                f"store {field.key} as a JSON string",
            )
        out[field.key] = value
    return out


def _ner_example(file: TaskFile, where: str, values: dict[str, Any], index: int) -> Example:
    tokens, tags = values["tokens"], values["tags"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise DataError(
            f"{file.path}, {where}: tokens must be a list of strings, found {short_repr(tokens)}",
            'store tokens as ["w1", "w2", ...]',
        )
    if tags is not None:
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise DataError(
                f"{file.path}, {where}: tags must be a list of tag strings, found {short_repr(tags)}",
                "store tags as [\"B-PER\", \"O\", ...] (map integer ids to tag names first)",
            )
        if len(tags) != len(tokens):
            raise DataError(
                f"{file.path}, {where}: {len(tokens)} tokens but {len(tags)} tags", "give every token exactly one tag"
            )
    return {"tokens": tokens, "tags": tags}


def _qa_example(file: TaskFile, where: str, values: dict[str, Any], index: int) -> Example:
    for key in ("question", "context"):
        if not isinstance(values[key], str):
            raise DataError(
                f"{file.path}, {where}: {key} must be a string, found {short_repr(values[key])}",
                f"store {key} as a JSON string",
            )
    qid = values["id"]
    return {
        "id": str(qid) if qid is not None else str(index),
        "question": values["question"],
        "context": values["context"],
        "answers": answers(file, where, values["answers"], impossible=False),
    }


# Tasks whose examples are more than strings; the others are checked by text_example.
_EXAMPLE_BUILDERS = {"ner": _ner_example, "qa": _qa_example}


def answers(file: TaskFile, where: str, raw: Any, *, impossible: bool) -> list[dict]:
    """SQuAD answers as [{"text", "answer_start"}]; also accepts {"text": [...], "answer_start": [...]}."""
    if raw is None:
        raw = []
    if isinstance(raw, dict):  # the column layout of Hugging Face `datasets`
        texts, starts = raw.get("text"), raw.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataError(
                f"{file.path}, {where}: answers needs equal-length 'text' and 'answer_start' lists", "fix the answers"
            )
        raw = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
    if not isinstance(raw, list):
        raise DataError(
            f"{file.path}, {where}: answers must be a list, found {type(raw).__name__}", "store answers as a list"
        )
    checked = []
    for i, answer in enumerate(raw):
        text = answer.get("text") if isinstance(answer, dict) else None
        start = answer.get("answer_start") if isinstance(answer, dict) else None
        if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool):
            raise DataError(
                f"{file.path}, {where}.answers[{i}]: expected {{'text': str, 'answer_start': int}},"
                f" found {short_repr(answer)}",
                "fix that answer",
            )
        checked.append({"text": text, "answer_start": start})
    if not checked and file.require_labels and not impossible:
        raise DataError(
            f"{file.path}, {where}: question has no answers",
            "add its answers, mark it \"is_impossible\": true, or pass require_labels=False for prediction input",
        )
    return checked

"""What a caller can say about how to read task data, and the example fields each task has."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

Example = dict[str, Any]
PathLike = str | os.PathLike


@dataclass(frozen=True)
class ReadOptions:
    """How to read the examples of ``task`` from a file (see :mod:`lmforge.data.formats`).

    ``format="auto"`` detects the format. ``*_field`` names a field of the file (a header
    cell or a JSON key) instead of the default names. ``columns`` lists the column indices
    of a header-less table's fields in order; ``header=None`` detects a header row.
    ``tag_column`` picks the CoNLL tag column (negative counts from the end). ``encoding``
    overrides UTF-8 (and label_text's latin-1 fallback). ``require_labels=False`` reads
    prediction input, whose labels, tags, targets, outputs and answers may be absent.
    """

    task: str
    format: str = "auto"
    text_field: str | None = None
    text_pair_field: str | None = None
    label_field: str | None = None
    source_field: str | None = None
    target_field: str | None = None
    columns: list[int] | None = None
    header: bool | None = None
    tag_column: int = -1
    encoding: str | None = None
    require_labels: bool = True


@dataclass(frozen=True)
class Field:
    """One key of an example and the names it may have in the file."""

    key: str
    names: tuple[str, ...]
    role: str  # "required", "label" (may be absent at prediction time) or "optional"
    option: str | None = None  # the ReadOptions attribute that can rename it
    configured: bool = False  # named by the caller rather than taken from the defaults

    def needed(self, require_labels: bool) -> bool:
        """Whether a record without this field is an error."""
        return self.role == "required" or (self.role == "label" and require_labels)


# The fields of each task's examples, in order; a field without default names is read only when configured.
TASK_FIELDS: dict[str, tuple[Field, ...]] = {
    "classify": (
        Field("text", ("text", "text_a", "sentence"), "required", "text_field"),
        Field("text_pair", (), "required", "text_pair_field"),
        Field("label", ("label",), "label", "label_field"),
    ),
    "ner": (
        Field("tokens", ("tokens", "words"), "required", "text_field"),
        Field("tags", ("tags", "ner_tags", "labels"), "label", "label_field"),
    ),
    "qa": (
        Field("id", ("id",), "optional"),
        Field("question", ("question",), "required"),
        Field("context", ("context",), "required"),
        Field("answers", ("answers",), "label"),
    ),
    "seq2seq": (
        Field("source", ("source", "src", "dialogue", "document"), "required", "source_field"),
        Field("target", ("target", "tgt", "summary"), "label", "target_field"),
    ),
    "chat": (
        Field("instruction", ("instruction",), "required"),
        Field("input", ("input",), "optional"),
        Field("output", ("output",), "label"),
    ),
}
TASKS = tuple(TASK_FIELDS)


def fields_for(options: ReadOptions) -> list[Field]:
    """The fields of ``options.task``, with the names the caller configured."""
    fields = []
    for field in TASK_FIELDS[options.task]:
        configured = getattr(options, field.option) if field.option else None
        if configured is not None:
            fields.append(replace(field, names=(configured,), configured=True))
        elif field.names:
            fields.append(field)
    return fields

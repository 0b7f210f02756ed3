"""``alpaca``: a JSON array of ``{"instruction", "input", "output"}``; a missing ``input`` reads as ``""``."""
from __future__ import annotations

from lmforge.data.formats.examples import examples_from_records
from lmforge.data.formats.json_records import array_records
from lmforge.data.formats.options import Example
from lmforge.data.formats.registry import BY_SUFFIX, register_format
from lmforge.data.formats.source import TaskFile


def _instruction_array(file: TaskFile) -> bool:
    if file.suffix != ".json":
        return False
    document = file.json_document
    return (isinstance(document, list) and bool(document) and isinstance(document[0], dict)
            and "instruction" in document[0])


@register_format("alpaca", tasks=("chat",), claims=[(BY_SUFFIX + 1, _instruction_array)])
def read_alpaca(file: TaskFile) -> list[Example]:
    return examples_from_records(file, array_records(file, "alpaca"))

"""``squad``: SQuAD v1.1 JSON, one example per question with every answer kept.

Extra answer keys such as DRCD's ``id`` are dropped; answer offsets are kept as given.
"""
from __future__ import annotations

from typing import Any

from lmforge.data.formats.examples import answers
from lmforge.data.formats.options import Example
from lmforge.data.formats.registry import BY_SUFFIX, register_format
from lmforge.data.formats.source import TaskFile
from lmforge.errors import DataError


def _squad_document(file: TaskFile) -> bool:
    if file.suffix != ".json":
        return False
    document = file.json_document
    return isinstance(document, dict) and "data" in document


@register_format("squad", tasks=("qa",), claims=[(BY_SUFFIX, _squad_document)])
def read_squad(file: TaskFile) -> list[Example]:
    obj = file.json_document
    if not isinstance(obj, dict) or "data" not in obj:
        found = f"keys {', '.join(map(repr, obj))}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise DataError(
            f"{file.path}: not SQuAD JSON (expected an object with a 'data' list, found {found})",
            "pass a SQuAD v1.1 file or choose another format=",
        )
    examples = []
    for ai, article in enumerate(_member(file, obj, "data", list, "")):
        for pi, para in enumerate(_member(file, article, "paragraphs", list, f"data[{ai}]")):
            where_p = f"data[{ai}].paragraphs[{pi}]"
            context = _member(file, para, "context", str, where_p)
            for qi, qa in enumerate(_member(file, para, "qas", list, where_p)):
                where = f"{where_p}.qas[{qi}]"
                question = _member(file, qa, "question", str, where)
                qid = qa.get("id")
                examples.append({
                    "id": str(qid) if qid is not None else f"{ai}-{pi}-{qi}",
                    "question": question,
                    "context": context,
                    "answers": answers(file, where, qa.get("answers"), impossible=bool(qa.get("is_impossible"))),
                })
    return examples


def _member(file: TaskFile, obj: Any, key: str, kind: type, where: str) -> Any:
    """``obj[key]`` checked to be a ``kind``, or a DataError naming the place in the file."""
    place = f"{file.path}, {where}" if where else str(file.path)
    if not isinstance(obj, dict):
        raise DataError(f"{place}: expected a JSON object, found {type(obj).__name__}", "check the SQuAD layout")
    if key not in obj:
        have = ", ".join(repr(k) for k in obj) or "none"
        raise DataError(f"{place}: missing field {key!r} (fields there: {have})", "check the SQuAD layout")
    value = obj[key]
    if not isinstance(value, kind):
        inner = f"{where}.{key}" if where else key
        raise DataError(
            f"{file.path}, {inner}: expected {kind.__name__}, found {type(value).__name__}", "check the SQuAD layout"
        )
    return value

"""``conll`` and ``bmes``: one token per line in whitespace-separated columns, a blank line between sentences.

CoNLL has the token in column 0 and the tag in ``tag_column`` (default: last); ``-DOCSTART-``
lines are dropped. BMES files hold exactly ``char tag`` per line.
"""
from __future__ import annotations

import re

from lmforge.data.formats.options import Example
from lmforge.data.formats.registry import BY_CONTENT, BY_SUFFIX, register_format
from lmforge.data.formats.source import TaskFile
from lmforge.data.records import short_repr
from lmforge.errors import ConfigError, DataError

_BMES_TAG = re.compile(r"O|[BMES]-\S+")


def split_columns(line: str) -> list[str]:
    # Spaces and tabs only: str.split() would also split at U+3000, a valid Chinese token.
    return re.split(r"[ \t]+", line.strip(" \t"))


def _bmes_suffix(file: TaskFile) -> bool:
    return file.suffix == ".bmes"


def _looks_bmes(file: TaskFile) -> bool:
    """NER text of two columns whose tags are B-/M-/E-/S-/O, with at least one M-, E- or S-."""
    if file.task != "ner":
        return False
    rows = [split_columns(line) for line in file.sample if not line.startswith("-DOCSTART-")]
    if not rows or any(len(row) != 2 for row in rows):
        return False
    tags = [row[1] for row in rows]
    # M- only exists in BMES; E-/S- alone could be BIOES, which has I- instead of M-.
    return all(_BMES_TAG.fullmatch(t) for t in tags) and any(t[0] in "MES" for t in tags)


def _ner_text(file: TaskFile) -> bool:
    return file.task == "ner"


@register_format("conll", tasks=("ner",), claims=[(BY_CONTENT + 1, _ner_text)])
def read_conll(file: TaskFile) -> list[Example]:
    return _read_columns(file, "conll")


@register_format("bmes", tasks=("ner",), claims=[(BY_SUFFIX, _bmes_suffix), (BY_CONTENT, _looks_bmes)])
def read_bmes(file: TaskFile) -> list[Example]:
    return _read_columns(file, "bmes")


def _read_columns(file: TaskFile, format: str) -> list[Example]:
    sentences: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []
    width: int | None = None
    first_line = 0
    tag_index: int | None = None

    def flush() -> None:
        if tokens:
            sentences.append({"tokens": list(tokens), "tags": list(tags) if tag_index is not None else None})
        tokens.clear()
        tags.clear()

    for lineno, line in file.lines():
        if not line.strip(" \t") or line.startswith("-DOCSTART-"):
            flush()  # a blank line ends a sentence, and so does a document boundary
            continue
        cells = split_columns(line)
        if width is None:
            width, first_line = len(cells), lineno
            tag_index = _tag_index(file, lineno, format, cells)
        elif len(cells) != width:
            raise DataError(
                f"{file.path}, line {lineno}: {len(cells)} columns, expected {width} like line {first_line}",
                "every token line needs the same columns (token ... tag); a space inside a token splits it",
            )
        tokens.append(cells[0])
        if tag_index is not None:
            tags.append(cells[tag_index])
    flush()
    return sentences


def _tag_index(file: TaskFile, lineno: int, format: str, cells: list[str]) -> int | None:
    """The tag's column, or None for token-only prediction input."""
    if format == "bmes" and len(cells) > 2:
        raise DataError(
            f"{file.path}, line {lineno}: {len(cells)} columns, expected 'char tag'",
            "BMES files hold one character and its tag per line; use format='conll' for more columns",
        )
    if len(cells) == 1:
        if not file.require_labels:
            return None
        raise DataError(
            f"{file.path}, line {lineno}: only one column ({short_repr(cells[0])}), expected 'token ... tag'",
            "separate token and tag with a space or tab, or pass require_labels=False for untagged tokens",
        )
    tag_column = file.options.tag_column
    index = tag_column if tag_column >= 0 else len(cells) + tag_column
    if not 1 <= index < len(cells):
        raise ConfigError(
            f"tag_column={tag_column} does not exist in {file.path}"
            f" (line {lineno} has {len(cells)} columns, token in 0)",
            f"pass a tag_column between 1 and {len(cells) - 1}, or -1 for the last",
        )
    return index

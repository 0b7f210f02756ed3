"""``label_text``: ``<label> <text>`` per line (SST-2's ``stsa.binary.*``, TREC's ``COARSE:fine question``);
``text``: one unlabelled text per line (what a trained classifier is asked to label)."""
from __future__ import annotations

from lmforge.data.formats.options import Example
from lmforge.data.formats.registry import BY_CONTENT, register_format
from lmforge.data.formats.source import TaskFile
from lmforge.data.records import short_repr
from lmforge.errors import DataError


def _plain_classification(file: TaskFile) -> bool:
    return file.task == "classify"


@register_format("label_text", tasks=("classify",), claims=[(BY_CONTENT + 4, _plain_classification)])
def read_label_text(file: TaskFile) -> list[Example]:
    """Split at the first whitespace; the label is kept whole. Blank lines are skipped."""
    examples = []
    for lineno, line in file.lines(latin1_fallback=True):
        parts = line.strip().split(None, 1)
        if not parts:
            continue
        if len(parts) == 1:
            raise DataError(
                f"{file.path}, line {lineno}: expected '<label> <text>' but found one word {short_repr(parts[0])}",
                "put the label, a space, then the text on every line; for unlabelled text, one per line, "
                "use format='tsv' with columns=[0]",
            )
        examples.append({"text": parts[1].strip(), "label": parts[0]})
    return examples


@register_format("text", tasks=("classify",))
def read_text_lines(file: TaskFile) -> list[Example]:
    """Every non-blank line is one text, without a label. Never detected: asked for as `--format text`."""
    return [{"text": line.strip(), "label": None} for _, line in file.lines(latin1_fallback=True) if line.strip()]

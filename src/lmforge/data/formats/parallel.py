"""``parallel``: line-aligned text files, the source file and a target file beside it."""
from __future__ import annotations

from pathlib import Path

from lmforge.data.formats.options import Example
from lmforge.data.formats.registry import BY_CONTENT, BY_TARGET, register_format
from lmforge.data.formats.source import TaskFile, decode_file
from lmforge.data.records import numbered_lines
from lmforge.errors import ConfigError, DataError


def _has_target(file: TaskFile) -> bool:
    return file.target is not None


def _unlabelled_sources(file: TaskFile) -> bool:
    return file.task == "seq2seq" and not file.require_labels


@register_format(
    "parallel",
    tasks=("seq2seq",),
    claims=[(BY_TARGET, _has_target), (BY_CONTENT + 5, _unlabelled_sources)],
    takes_target=True,
)
def read_parallel(file: TaskFile) -> list[Example]:
    sources = _plain_lines(file.path, file.options.encoding)
    if file.target is None:
        if file.require_labels:
            raise ConfigError(
                f"the parallel format needs target_path= next to {file.path}",
                "pass the line-aligned target file, or require_labels=False for source-only input",
            )
        return [{"source": s, "target": None} for s in sources if s]
    targets = _plain_lines(file.target, file.options.encoding)
    if len(sources) != len(targets):
        raise DataError(
            f"{file.path} has {len(sources)} lines but {file.target} has {len(targets)}",
            "parallel files must be line-aligned: line i of the target translates line i of the source",
        )
    # A pair blank on both sides carries nothing; dropping both keeps the alignment.
    return [{"source": s, "target": t} for s, t in zip(sources, targets) if s or t]


def _plain_lines(path: Path, encoding: str | None) -> list[str]:
    lines = [line.strip() for _, line in numbered_lines(decode_file(path, encoding))]
    while lines and not lines[-1]:  # trailing blank lines are editor noise, not sentence pairs
        lines.pop()
    return lines

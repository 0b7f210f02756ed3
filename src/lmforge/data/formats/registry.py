"""The registry of task-data formats: each format module registers its reader here.

A format also registers *claims*, the tests by which ``format="auto"`` recognises it.
Detection tries every claim in rank order and the first that holds names the format:
first a given target file (``BY_TARGET``), then the file's extension and, for ``.json``,
the shape of the document (``BY_SUFFIX``), then the first lines of the file
(``BY_CONTENT``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the formats import the registry, not the other way round
    from lmforge.data.formats.options import Example
    from lmforge.data.formats.source import TaskFile

BY_TARGET = 0
BY_SUFFIX = 10
BY_CONTENT = 50


@dataclass(frozen=True)
class ExampleFormat:
    """A file format and the tasks whose examples it can hold."""

    name: str
    tasks: tuple[str, ...]
    read: Callable[[TaskFile], list[Example]]
    takes_target: bool = False  # read together with a second, line-aligned target file


@dataclass(frozen=True)
class Claim:
    """``test(file)`` holds when ``file`` is in ``format``; claims are tried by ``rank``."""

    rank: int
    format: str
    test: Callable[[TaskFile], bool]


FORMAT_READERS: dict[str, ExampleFormat] = {}
CLAIMS: list[Claim] = []


def register_format(
    name: str,
    *,
    tasks: Sequence[str],
    claims: Sequence[tuple[int, Callable[[TaskFile], bool]]] = (),
    takes_target: bool = False,
) -> Callable:
    """Register the decorated function as the reader of ``name`` files (and ``claims`` for detection)."""

    def register(read: Callable[[TaskFile], list[Example]]) -> Callable[[TaskFile], list[Example]]:
        if name in FORMAT_READERS:
            raise ValueError(f"format {name!r} is registered twice")
        FORMAT_READERS[name] = ExampleFormat(name, tuple(tasks), read, takes_target)
        CLAIMS.extend(Claim(rank, name, test) for rank, test in claims)
        CLAIMS.sort(key=lambda claim: claim.rank)  # stable: equal ranks keep registration order
        return read

    return register


def formats_for(task: str) -> tuple[str, ...]:
    """The formats that can hold ``task``'s examples: those made for it first, then the general ones."""
    fitting = [fmt for fmt in FORMAT_READERS.values() if task in fmt.tasks]
    return tuple(fmt.name for fmt in sorted(fitting, key=lambda fmt: len(fmt.tasks)))

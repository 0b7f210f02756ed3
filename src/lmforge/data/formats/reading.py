"""``read_examples``: check the request, detect the format, and hand the file to that format's reader."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from lmforge.data.formats.options import TASKS, Example, PathLike, ReadOptions
from lmforge.data.formats.registry import CLAIMS, FORMAT_READERS, ExampleFormat, formats_for
from lmforge.data.formats.source import TaskFile, existing_file
from lmforge.errors import ConfigError, DataError


def read_examples(
    path: PathLike, options: ReadOptions | None = None, *, target_path: PathLike | None = None, **settings: Any
) -> list[Example]:
    """Read the examples of a task from ``path`` (and ``target_path`` for parallel text).

    Pass a :class:`ReadOptions`, or its fields as keywords (``task="ner", tag_column=1``);
    keywords given with ``options`` replace those fields.

    ``format="auto"`` decides from the extension, then the content: ``.json`` holding an
    object with ``"data"`` is SQuAD, an array of objects with ``"instruction"`` is Alpaca,
    other JSON is ``json``; ``.jsonl`` is JSON Lines; ``.csv``/``.tsv`` are tables (for NER,
    ``.tsv`` is read as CoNLL columns); ``.bmes`` is BMES; a ``target_path`` means parallel
    text. Other files are sniffed: NER files are ``bmes`` when they have two columns of
    B-/M-/E-/S-/O tags and ``conll`` otherwise; a line starting with ``{`` is JSON Lines; a
    first line holding a tab is ``tsv``; other classification files are ``label_text``
    and other seq2seq files are a source-only ``parallel`` file (only with
    ``require_labels=False``).

    ``header=None`` detects a header: the first row is one when it contains a field name
    (configured or default). When a field name is configured and no ``columns`` are given,
    the file must have a header holding it. Missing labels are an error unless
    ``require_labels=False``.
    """
    options = ReadOptions(**settings) if options is None else replace(options, **settings)
    _check_options(options)
    file = TaskFile(
        existing_file(path), options, existing_file(target_path) if target_path is not None else None
    )
    reader = _reader_for(file)
    examples = reader.read(file)
    if not examples:
        raise DataError(
            f"no examples in {file.path}", f"check that the file holds {options.task} data in the {reader.name} format"
        )
    return examples


def _check_options(options: ReadOptions) -> None:
    if options.task not in TASKS:
        raise ConfigError(f"unknown task {options.task!r}", f"use one of {', '.join(TASKS)}")
    if options.format != "auto" and options.format not in FORMAT_READERS:
        raise ConfigError(f"unknown format {options.format!r}", f"use 'auto' or one of {', '.join(FORMAT_READERS)}")


def _reader_for(file: TaskFile) -> ExampleFormat:
    """The format ``file`` is read in, checked to hold the task's examples."""
    task = file.task
    reader = FORMAT_READERS[detect_format(file) if file.options.format == "auto" else file.options.format]
    if task not in reader.tasks:
        raise ConfigError(
            f"format {reader.name!r} cannot hold {task} examples ({file.path})",
            f"for task {task!r} use one of {', '.join(formats_for(task))}",
        )
    if file.target is not None and not reader.takes_target:
        raise ConfigError(f"target_path is only used by the parallel format, not {reader.name!r}", "drop target_path")
    return reader


def detect_format(file: TaskFile) -> str:
    """The first format whose claim on ``file`` holds (see :mod:`lmforge.data.formats.registry`)."""
    for claim in CLAIMS:
        if claim.test(file):
            return claim.format
    formats = formats_for(file.task)
    paired = any(FORMAT_READERS[name].takes_target for name in formats)
    raise DataError(
        f"cannot tell the format of {file.path}",
        f"pass format= (one of {', '.join(formats)})"
        + (" or target_path= for line-aligned parallel files" if paired else ""),
    )

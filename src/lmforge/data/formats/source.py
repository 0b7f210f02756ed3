"""The file being read: its path, the reading options, and its text decoded once."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from lmforge.data.formats.options import Field, PathLike, ReadOptions, fields_for
from lmforge.data.records import MalformedText, json_document, numbered_lines
from lmforge.errors import ConfigError, DataError

# Format detection looks at no more than this many characters of a file.
_SNIFF_CHARS = 65536


def existing_file(path: PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p} does not exist", "check the path (relative paths start at the current directory)")
    if not p.is_file():
        raise DataError(f"{p} is not a file", "pass the data file itself, not a folder")
    return p


def decode_file(path: Path, encoding: str | None, *, latin1_fallback: bool = False) -> str:
    """The decoded file; ``utf-8-sig`` so a byte-order mark never sticks to the first cell."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}", "check the file's permissions") from None
    if not data.strip():
        raise DataError(f"{path} is empty", "pass a file that holds examples")
    try:
        return data.decode(encoding or "utf-8-sig")
    except LookupError:
        raise ConfigError(
            f"unknown encoding {encoding!r}", "pass a Python codec name such as 'utf-8' or 'gbk'"
        ) from None
    except UnicodeDecodeError as e:
        if latin1_fallback and encoding is None:
            return data.decode("latin-1")  # every byte is valid latin-1: TREC's stray 0xF0
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}, line {line}: not valid {encoding or 'UTF-8'} (byte {data[e.start]:#04x})",
            "pass encoding= with the file's real encoding (e.g. 'gbk', 'latin-1') or re-save it as UTF-8",
        ) from None


class TaskFile:
    """A file of task examples (plus the target file of parallel text) and how to read it.

    Text and parsed JSON are kept once decoded, so format detection and the reader that
    follows it read the file only once.
    """

    def __init__(self, path: Path, options: ReadOptions, target: Path | None = None):
        self.path, self.options, self.target = path, options, target
        self.task, self.require_labels = options.task, options.require_labels
        self.fields: list[Field] = fields_for(options)
        self._texts: dict[bool, str] = {}

    @property
    def suffix(self) -> str:
        return self.path.suffix.lower()

    def text(self, *, latin1_fallback: bool = False) -> str:
        """The decoded text; ``latin1_fallback`` reads undecodable UTF-8 as latin-1 instead of failing."""
        if latin1_fallback not in self._texts:
            self._texts[latin1_fallback] = decode_file(
                self.path, self.options.encoding, latin1_fallback=latin1_fallback
            )
        return self._texts[latin1_fallback]

    def lines(self, *, latin1_fallback: bool = False) -> list[tuple[int, str]]:
        """(1-based line number, line) pairs of the text."""
        return numbered_lines(self.text(latin1_fallback=latin1_fallback))

    @cached_property
    def json_document(self) -> Any:
        """The file parsed as one JSON document."""
        try:
            return json_document(self.text())
        except MalformedText as e:
            raise DataError(
                f"{self.path}, line {e.line}: invalid JSON ({e.reason})", "fix the JSON syntax there"
            ) from None

    @cached_property
    def sample(self) -> list[str]:
        """The non-blank lines at the start of the file, for format detection."""
        head = self.text(latin1_fallback=True)[:_SNIFF_CHARS]
        nonblank = [line for _, line in numbered_lines(head) if line.strip()]
        if not nonblank:
            raise DataError(f"{self.path} is empty", "pass a file that holds examples")
        return nonblank

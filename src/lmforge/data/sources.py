"""Read raw documents from files, folders, globs, built-in corpora or Hugging Face datasets.

Every reader returns a plain ``list[str]``: one entry per document, in a
deterministic order, with whitespace-only documents dropped.

Supported formats (chosen by file extension):

* ``.txt``, ``.text``, ``.md`` - the whole file is one document;
* ``.jsonl`` - one JSON object (or string) per line, text under ``text_field``;
* ``.json`` - a list of objects or strings (a single object is one record);
* ``.csv``, ``.tsv`` - a header row is required, text in ``column`` (default ``text_field``);
* ``.parquet`` - text in ``column`` (default ``text_field``).

A single file named explicitly with any other extension is read as plain text.
"""
from __future__ import annotations

import ast
import glob as globlib
import importlib.util
import inspect
import os
import sysconfig
from pathlib import Path
from typing import Any

from lmforge.data.records import MalformedText, delimited_rows, json_document, jsonl_records, parquet_column
from lmforge.errors import DataError

BUILTIN_CORPORA: dict[str, str] = {
    "python-docs": (
        "about 1.3 MB of English reference text from the running Python installation: "
        "every pydoc help topic plus the docstrings of common standard-library modules, "
        "their public classes, functions and methods (no download needed)"
    ),
    "tinyshakespeare": (
        "Karpathy's 1.1 MB Tiny Shakespeare, read from $LMFORGE_DATA_DIR/tinyshakespeare/input.txt"
    ),
}

TEXT_SUFFIXES = (".txt", ".text", ".md")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + (".jsonl", ".json", ".csv", ".tsv", ".parquet")

# Read for the "python-docs" corpus. Docstrings are taken from the source files (the
# modules are never imported), so the corpus cannot be changed by import side effects
# or by libraries that monkeypatch the standard library. Modules written in C have no
# source to read and are left out; _pydecimal and _pyio hold the documented Python
# versions of decimal and io.
_DOC_MODULES = (
    "_collections_abc", "_pydecimal", "_pyio", "argparse", "ast", "asyncio.base_events",
    "asyncio.events", "asyncio.futures", "asyncio.locks", "asyncio.queues", "asyncio.streams",
    "asyncio.subprocess", "asyncio.tasks", "base64", "bdb", "bisect", "bz2", "calendar", "cmd",
    "code", "codecs", "codeop", "collections", "colorsys", "concurrent.futures._base",
    "concurrent.futures.process", "concurrent.futures.thread", "configparser", "contextlib",
    "copy", "copyreg", "csv", "dataclasses", "datetime", "difflib", "dis", "doctest",
    "email.charset", "email.encoders", "email.generator", "email.header", "email.headerregistry",
    "email.message", "email.parser", "email.policy", "email.utils", "enum", "filecmp",
    "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob",
    "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "html.parser", "http", "http.client",
    "http.cookiejar", "http.cookies", "http.server", "imaplib", "importlib", "importlib.abc",
    "importlib.machinery", "importlib.metadata", "importlib.resources", "importlib.util",
    "inspect", "io", "ipaddress", "json", "json.decoder", "json.encoder", "keyword", "linecache",
    "locale", "logging", "logging.config", "logging.handlers", "lzma", "mailbox", "mimetypes",
    "modulefinder", "multiprocessing.connection", "multiprocessing.managers",
    "multiprocessing.pool", "multiprocessing.queues", "multiprocessing.shared_memory",
    "multiprocessing.synchronize", "netrc", "numbers", "operator", "optparse", "os", "pathlib",
    "pickle", "pickletools", "pkgutil", "platform", "plistlib", "poplib", "posixpath", "pprint",
    "profile", "pstats", "py_compile", "pyclbr", "queue", "quopri", "random", "re", "reprlib",
    "runpy", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib",
    "socket", "socketserver", "sqlite3", "ssl", "stat", "statistics", "string", "stringprep",
    "struct", "subprocess", "symtable", "sysconfig", "tabnanny", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "token", "tokenize", "tomllib", "trace", "traceback",
    "tracemalloc", "types", "typing", "unittest", "unittest.case", "unittest.mock",
    "unittest.suite", "urllib.error", "urllib.parse", "urllib.request", "urllib.response",
    "urllib.robotparser", "uuid", "warnings", "wave", "weakref", "xml.dom", "xml.dom.minidom",
    "xml.dom.pulldom", "xml.etree.ElementTree", "xml.sax", "xml.sax.handler", "xml.sax.saxutils",
    "xml.sax.xmlreader", "xmlrpc.client", "xmlrpc.server", "zipapp", "zipfile", "zipimport",
    "zoneinfo",
)


def read_documents(spec: str, *, text_field: str = "text", column: str | None = None) -> list[str]:
    """Return the documents named by ``spec``.

    ``spec`` is a built-in corpus name (see ``BUILTIN_CORPORA``), a file, a folder
    (searched recursively for supported files, hidden entries skipped, sorted by path),
    a glob pattern (``data/**/*.jsonl``), or - when the ``datasets`` package is
    installed - a Hugging Face dataset name whose ``train`` split is loaded.
    ``column`` picks the CSV/TSV/Parquet/dataset column and defaults to ``text_field``.
    """
    spec = str(spec)
    if spec in BUILTIN_CORPORA:
        return _read_builtin(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        docs = _read_file(path, text_field, column, explicit=True)
        if not docs:
            raise DataError(f"{path} contains no text", "pass a file that contains at least one non-empty document")
        return docs
    if path.is_dir():
        files = _supported_files_under(path)
        if not files:
            raise DataError(
                f"no supported files in folder {path}",
                f"put text files there ({', '.join(SUPPORTED_SUFFIXES)})",
            )
        return _read_many(files, str(path), text_field, column)
    if any(c in spec for c in "*?["):
        matched: list[Path] = []
        for match in sorted(globlib.glob(os.path.expanduser(spec), recursive=True)):
            p = Path(match)
            if p.is_dir():
                matched.extend(_supported_files_under(p))
            elif p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES:
                matched.append(p)
        matched = sorted(dict.fromkeys(matched))
        if not matched:
            raise DataError(
                f"no supported files match {spec!r}",
                f"check the pattern; supported extensions are {', '.join(SUPPORTED_SUFFIXES)}",
            )
        return _read_many(matched, spec, text_field, column)
    looks_like_path = spec.startswith((".", "/", "~")) or path.suffix.lower() in SUPPORTED_SUFFIXES
    if not looks_like_path and importlib.util.find_spec("datasets") is not None:
        return _read_hf_dataset(spec, column or text_field)
    raise DataError(
        f"{spec} does not exist",
        "pass an existing file, folder or glob, or a built-in corpus ("
        + ", ".join(BUILTIN_CORPORA)
        + "); install `datasets` to load Hugging Face datasets by name",
    )


# ----------------------------------------------------------------------------- built-in corpora


def _read_builtin(name: str) -> list[str]:
    if name == "python-docs":
        return python_docs_corpus()
    if name == "tinyshakespeare":
        return _read_file(_data_dir_file("tinyshakespeare", "input.txt"), "text", None, explicit=True)
    raise AssertionError(name)  # every BUILTIN_CORPORA key is handled above


def _data_dir_file(*parts: str) -> Path:
    root = os.environ.get("LMFORGE_DATA_DIR")
    if not root:
        raise DataError(
            "LMFORGE_DATA_DIR is not set, so the built-in corpus cannot be found",
            "export LMFORGE_DATA_DIR=/path/to/data (the folder holding " + "/".join(parts) + ")",
        )
    path = Path(root).expanduser().joinpath(*parts)
    if not path.is_file():
        raise DataError(
            f"{path} does not exist",
            f"download it to that path or point LMFORGE_DATA_DIR at the folder that holds {'/'.join(parts)}",
        )
    return path


def python_docs_corpus() -> list[str]:
    """The ``python-docs`` corpus: pydoc topics, then stdlib docstrings, one document each.

    Docstrings of each listed module, its public classes and functions and the public
    methods of those classes are read from the standard library's source files. The
    text depends only on the Python version, so it is identical across runs on the
    same interpreter. Repeated docstrings appear once.
    """
    from pydoc_data.topics import topics  # about 1 MB of text: loaded only for this corpus

    docs: list[str] = []
    seen: set[str] = set()

    def add(doc: str | None) -> None:
        if doc and doc.strip() and doc not in seen:
            seen.add(doc)
            docs.append(doc)

    for key in sorted(topics):
        add(inspect.cleandoc(topics[key]))
    stdlib = Path(sysconfig.get_path("stdlib"))
    for name in _DOC_MODULES:
        base = stdlib.joinpath(*name.split("."))
        source = base.with_suffix(".py")
        if not source.is_file():
            source = base / "__init__.py"
        try:
            tree = ast.parse(source.read_bytes())
        except (OSError, SyntaxError, ValueError):  # absent or unreadable in this installation
            continue
        add(ast.get_docstring(tree))
        for node in tree.body:
            if isinstance(node, _DEFINITIONS) and not node.name.startswith("_"):
                add(ast.get_docstring(node))
                if isinstance(node, ast.ClassDef):
                    for member in node.body:
                        if isinstance(member, _DEFINITIONS) and not member.name.startswith("_"):
                            add(ast.get_docstring(member))
    return docs


_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


# ----------------------------------------------------------------------------- files


def _supported_files_under(folder: Path) -> list[Path]:
    files = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES:
            files.append(p)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _read_many(files: list[Path], spec: str, text_field: str, column: str | None) -> list[str]:
    docs: list[str] = []
    for f in files:
        docs.extend(_read_file(f, text_field, column, explicit=False))
    if not docs:
        raise DataError(f"no non-empty documents in {spec}", "check that the files contain text")
    return docs


def _read_file(path: Path, text_field: str, column: str | None, *, explicit: bool) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        docs = _read_parquet(path, column or text_field)
    else:
        text = _read_text(path)
        if suffix == ".jsonl":
            docs = _read_jsonl(path, text, text_field)
        elif suffix == ".json":
            docs = _read_json(path, text, text_field)
        elif suffix in (".csv", ".tsv"):
            docs = _read_csv(path, text, column or text_field, "\t" if suffix == ".tsv" else ",")
        else:
            docs = [text]
    docs = [d for d in docs if d.strip()]
    if explicit and not docs:
        raise DataError(f"{path} is empty", "pass a file that contains text")
    return docs


# Leading bytes of document formats people pass for text, and how to get the text out of each.
_DOCUMENT_SIGNATURES = (
    (b"%PDF", "a PDF document", "extract its text first (e.g. `pdftotext FILE.pdf FILE.txt`) and pass the .txt"),
    (b"PK\x03\x04", "a zip archive (also .docx, .xlsx, .epub)",
     "unpack it or save the document as plain text, and pass the text file"),
    (b"{\\rtf", "an RTF document", "save it as plain text and pass the .txt"),
    (b"\xd0\xcf\x11\xe0", "a legacy Office document (.doc, .xls)", "save it as plain text and pass the .txt"),
    (b"\x1f\x8b", "a gzip-compressed file", "decompress it first (`gunzip FILE.gz`) and pass the result"),
)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    for signature, what, fix in _DOCUMENT_SIGNATURES:
        if data.startswith(signature):
            raise DataError(f"{path} is {what}, not text", fix)
    if b"\x00" in data:
        raise DataError(f"{path} is a binary file, not text", "convert it to UTF-8 text or leave it out of --data")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not valid UTF-8 (byte {e.start})",
            "convert it to UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or leave it out of --data",
        ) from None
    # Same newline handling as open(): Windows and old-Mac line endings become "\n".
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _field_value(value: Any, where: str, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise DataError(f"{where}: field {field!r} is a {type(value).__name__}, not a string", "store the text as a string")


def _record_text(record: Any, where: str, field: str) -> str:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise DataError(
            f"{where}: expected a JSON object or string, got {type(record).__name__}",
            f'store each document as {{"{field}": "..."}} or as a string',
        )
    if field not in record:
        available = ", ".join(map(repr, record)) or "none"
        raise DataError(f"{where}: no field {field!r} (fields: {available})", "set the text field to one of those fields")
    return _field_value(record[field], where, field)


def _read_jsonl(path: Path, text: str, field: str) -> list[str]:
    docs = []
    try:
        for lineno, record in jsonl_records(text):
            docs.append(_record_text(record, f"{path}:{lineno}", field))
    except MalformedText as e:
        raise DataError(
            f"{path}:{e.line}: malformed JSON ({e.reason} at column {e.column})",
            "fix or remove that line; each line must hold one JSON object",
        ) from None
    return docs


def _read_json(path: Path, text: str, field: str) -> list[str]:
    if not text.strip():
        return []
    try:
        data = json_document(text)
    except MalformedText as e:
        hint = "; this looks like JSON Lines, rename it to .jsonl" if e.reason == "Extra data" else ""
        raise DataError(f"{path}:{e.line}: malformed JSON ({e.reason} at column {e.column})", "fix the file" + hint) from None
    records = data if isinstance(data, list) else [data]
    return [_record_text(r, f"{path} item {i}", field) for i, r in enumerate(records)]


def _read_csv(path: Path, text: str, column: str, delimiter: str) -> list[str]:
    try:
        rows = [cells for _, cells in delimited_rows(text, delimiter)]
    except MalformedText as e:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise DataError(f"{path}:{e.line}: malformed {kind} ({e.reason})", "fix the file") from None
    if not rows or not rows[0]:
        return []
    header = rows[0]
    if column not in header:
        raise DataError(
            f"{path}: no column {column!r} (columns: {', '.join(map(repr, header))})",
            "set the text column to one of those columns; the first row must be a header",
        )
    index = header.index(column)
    return [row[index] for row in rows[1:] if len(row) > index]


def _read_parquet(path: Path, column: str) -> list[str]:
    values = parquet_column(path, column)
    return [_field_value(v, f"{path} row {i}", column) for i, v in enumerate(values)]


def _read_hf_dataset(name: str, column: str) -> list[str]:
    import datasets  # optional and heavy; the caller checked that it is installed

    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as e:
        raise DataError(
            f"{name} is not a local path and could not be loaded as a Hugging Face dataset ({type(e).__name__}: {e})",
            "check the path or the dataset name (and your network connection)",
        ) from None
    if column not in ds.column_names:
        raise DataError(
            f"dataset {name}: no column {column!r} (columns: {', '.join(map(repr, ds.column_names))})",
            "set the text column to one of those columns",
        )
    return [v for v in ds[column] if isinstance(v, str) and v.strip()]

"""The record readers under both corpus sources and task formats: what they return, and where
they say a syntax error is."""
import pytest

from lmforge.data.formats import read_examples
from lmforge.data.records import (MalformedText, delimited_rows, json_document, jsonl_records, numbered_lines,
                                  short_repr, tab_rows)
from lmforge.data.sources import read_documents


def test_numbered_lines_split_at_newlines_only():
    assert numbered_lines("a\r\nb\u2028c\n\nd\n") == [(1, "a"), (2, "b\u2028c"), (3, ""), (4, "d")]


def test_jsonl_records_skip_blank_lines_and_locate_errors():
    assert list(jsonl_records('{"a": 1}\n\n  \n"s"\n')) == [(1, {"a": 1}), (4, "s")]
    with pytest.raises(MalformedText) as e:
        list(jsonl_records('{"a": 1}\n{"a": }\n'))
    assert (e.value.line, e.value.column, e.value.reason) == (2, 7, "Expecting value")


def test_json_document_locates_errors():
    assert json_document('[1, {"a": null}]') == [1, {"a": None}]
    with pytest.raises(MalformedText) as e:
        json_document('[\n 1,\n 2 3\n]')
    assert (e.value.line, e.value.column) == (3, 4)


def test_delimited_rows_keep_the_line_each_row_starts_on():
    rows = delimited_rows('h1,h2\n"two\nlines",x\n\nlast,"a, b"\n')
    assert rows == [(1, ["h1", "h2"]), (2, ["two\nlines", "x"]), (4, []), (5, ["last", "a, b"])]
    assert delimited_rows("a\tb\n", "\t") == [(1, ["a", "b"])]


def test_tab_rows_have_no_quoting():
    assert tab_rows('"a"\tb\n\n c\td\n') == [(1, ['"a"', "b"]), (3, [" c", "d"])]


def test_short_repr():
    assert short_repr("abc") == "'abc'"
    assert short_repr("x" * 100) == "'" + "x" * 36 + "..."


def test_cells_longer_than_the_csv_default_limit(tmp_path):
    long_text = "word " * 40_000  # 200 KB, past csv's 128 KiB default
    p = tmp_path / "long.csv"
    p.write_text(f"text,label\n{long_text},pos\n", encoding="utf-8")
    assert read_examples(p, task="classify") == [{"text": long_text.strip(), "label": "pos"}]
    assert read_documents(str(p)) == [long_text]


def test_corpus_csv_cells_keep_unicode_line_separators(tmp_path):
    p = tmp_path / "docs.csv"
    p.write_text("text\nfirst\x1cpart\nsecond\u2028part\n", encoding="utf-8")
    assert read_documents(str(p)) == ["first\x1cpart", "second\u2028part"]

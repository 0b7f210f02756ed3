import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.data.sources import BUILTIN_CORPORA, read_documents
from lmforge.errors import DataError


def test_txt_file_is_one_document(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("line one\nline two\r\n", encoding="utf-8")
    assert read_documents(str(p)) == ["line one\nline two\n"]


def test_jsonl_and_custom_field(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "first"}\n\n{"text": "second", "id": 2}\n"bare string"\n', encoding="utf-8")
    assert read_documents(str(p)) == ["first", "second", "bare string"]
    q = tmp_path / "b.jsonl"
    q.write_text('{"body": "x"}\n{"body": "y"}\n', encoding="utf-8")
    assert read_documents(str(q), text_field="body") == ["x", "y"]


def test_json_list_of_objects_or_strings(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"text": "one"}, {"text": "two"}]), encoding="utf-8")
    assert read_documents(str(p)) == ["one", "two"]
    q = tmp_path / "b.json"
    q.write_text(json.dumps(["alpha", "", "beta"]), encoding="utf-8")
    assert read_documents(str(q)) == ["alpha", "beta"]


def test_csv_and_tsv(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text('id,text\n1,"hello, world"\n2,"multi\nline"\n', encoding="utf-8")
    assert read_documents(str(p)) == ["hello, world", "multi\nline"]
    q = tmp_path / "b.tsv"
    q.write_text("label\tsentence\npos\tgood film\nneg\tbad film\n", encoding="utf-8")
    assert read_documents(str(q), column="sentence") == ["good film", "bad film"]


def test_parquet(tmp_path):
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "content": ["alpha", None, "gamma"]}), p)
    assert read_documents(str(p), column="content") == ["alpha", "gamma"]


def test_directory_and_glob_are_sorted_and_recursive(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("B", encoding="utf-8")
    (tmp_path / "a.txt").write_text("A", encoding="utf-8")
    (tmp_path / "sub" / "c.jsonl").write_text('{"text": "C"}\n', encoding="utf-8")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden.txt").write_text("H", encoding="utf-8")
    assert read_documents(str(tmp_path)) == ["A", "B", "C"]
    assert read_documents(str(tmp_path / "*.txt")) == ["A", "B"]
    assert read_documents(str(tmp_path / "**" / "*.jsonl")) == ["C"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", b"", "is empty"),
        ("blank.txt", b"  \n\n", "is empty"),
        ("bin.txt", b"abc\x00def", "binary"),
        ("latin1.txt", "café".encode("latin-1"), "not valid UTF-8"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": broken}\n', ":2: malformed JSON"),
        ("nofield.jsonl", b'{"body": "x"}\n', "no field 'text' (fields: 'body')"),
        ("nocol.csv", b"a,b\n1,2\n", "no column 'text' (columns: 'a', 'b')"),
        ("bad.json", b'[{"text": "a"},', "malformed JSON"),
    ],
)
def test_file_errors(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        read_documents(str(p))
    assert e.value.fix


def test_missing_parquet_column_names_available(tmp_path):
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["x"]}), p)
    with pytest.raises(DataError, match="columns: 'body'"):
        read_documents(str(p))


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_documents(str(tmp_path / "nope.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no supported files"):
        read_documents(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="no supported files match"):
        read_documents(str(tmp_path / "*.jsonl"))


def test_python_docs_corpus_is_large_and_deterministic():
    assert "python-docs" in BUILTIN_CORPORA
    docs = read_documents("python-docs")
    assert sum(len(d.encode("utf-8")) for d in docs) > 500_000
    assert len(docs) > 1000 and all(d.strip() for d in docs)
    assert docs == read_documents("python-docs")


def test_tinyshakespeare_needs_data_dir(monkeypatch):
    monkeypatch.delenv("LMFORGE_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="LMFORGE_DATA_DIR"):
        read_documents("tinyshakespeare")


def test_tinyshakespeare_from_data_dir():
    if not os.environ.get("LMFORGE_DATA_DIR"):
        pytest.skip("LMFORGE_DATA_DIR not set: the tinyshakespeare corpus lives under it")
    (doc,) = read_documents("tinyshakespeare")
    assert len(doc) == 1_115_394 and doc.startswith("First Citizen:")

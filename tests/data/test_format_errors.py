"""Every problem with a task-data file is one line that names the file (and the place in it) and says
how to fix it; bad arguments are configuration errors."""
import json

import pytest

from lmforge.data.formats import read_examples
from lmforge.errors import ConfigError, DataError


def write(tmp_path, name, text, encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return p


def raises_naming(path, **kwargs):
    with pytest.raises(DataError) as info:
        read_examples(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and info.value.fix
    return message


def test_error_missing_path(tmp_path):
    assert "does not exist" in raises_naming(tmp_path / "nope.tsv", task="classify")


def test_error_empty_file(tmp_path):
    assert "empty" in raises_naming(write(tmp_path, "e.txt", " \n\n"), task="classify")


@pytest.mark.parametrize(
    "name, content, kwargs, fragments",
    [
        pytest.param("s.txt", "1 fine\nlonely\n",
                     dict(task="classify", format="label_text"), ("line 2",), id="label_text_single_word"),
        pytest.param("gbk.tsv", "text\tlabel\n好\t1\n".encode("gbk"),
                     dict(task="classify"), ("line 2",), id="tsv_not_utf8"),
        pytest.param("c.txt", "EU B-ORG\nrejects\n",
                     dict(task="ner", format="conll"), ("line 2",), id="conll_one_column"),
        pytest.param("c.txt", "EU\nrejects\n",
                     dict(task="ner", format="conll"), ("line 1",), id="conll_first_line_one_column"),
        pytest.param("c.bmes", "高 x B-NAME\n", dict(task="ner"), ("line 1",), id="bmes_extra_column"),
        pytest.param("c.txt", "-DOCSTART- -X- -X- O\n\n",
                     dict(task="ner", format="conll"), ("no examples",), id="no_examples"),
        pytest.param("d.jsonl", '{"text": "a", "label": "1"}\n{"text": "b", \n',
                     dict(task="classify"), ("line 2",), id="invalid_jsonl_names_line"),
        pytest.param("d.json", '[\n {"text": "a"},\n {"text" "b"}\n]',
                     dict(task="classify"), ("line 3",), id="invalid_json_names_line"),
        pytest.param("d.jsonl", '["a", "b"]\n', dict(task="classify"), ("line 1",), id="jsonl_record_not_object"),
        pytest.param("d.json", '{"rows": []}', dict(task="classify"), ("'rows'",), id="json_not_an_array"),
        pytest.param("d.json", json.dumps({"version": "1", "items": []}),
                     dict(task="qa", format="squad"), ("'data'",), id="not_squad"),
        pytest.param("d.json", json.dumps({"data": [{"paragraphs": [{"context": "c"}]}]}),
                     dict(task="qa"), ("data[0].paragraphs[0]",), id="squad_missing_qas"),
        pytest.param("d.json",
                     json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q"}]}]}]}),
                     dict(task="qa"), ("no answers",), id="squad_question_without_answers"),
        pytest.param("d.jsonl", json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n",
                     dict(task="ner"), ("2 tokens but 1 tags",), id="ner_tags_length"),
        pytest.param("plain.txt", "just a sentence\n", dict(task="seq2seq"), ("format",), id="undetectable_format"),
        pytest.param("t.tsv", "label\ttext_a\n1\tok\n0\tbad\textra\n",
                     dict(task="classify"), ("line 3", "3 columns, expected 2"), id="tsv_wrong_column_count"),
        pytest.param("t.tsv", "label\tbody\n1\tok\n",
                     dict(task="classify"), ("'text'", "'label', 'body'"), id="tsv_missing_field_lists_fields"),
        pytest.param("t.tsv", "good\t1\n",
                     dict(task="classify", text_field="review"), ("'review'",), id="configured_field_without_header"),
        pytest.param("d.jsonl", '{"dialogue": "a", "summary": "b"}\n{"dialogue": "c", "topic": "t"}\n',
                     dict(task="seq2seq"), ("line 2", "'dialogue', 'topic'"), id="jsonl_missing_field_lists_fields"),
        pytest.param("d.jsonl", '{"text": "good"}\n', dict(task="classify"), ("'label'",), id="missing_label"),
    ],
)
def test_error_names_the_file_and_the_place(tmp_path, name, content, kwargs, fragments):
    message = raises_naming(write(tmp_path, name, content), **kwargs)
    assert all(fragment in message for fragment in fragments)


def test_error_parallel_line_counts(tmp_path):
    src = write(tmp_path, "train.en", "one\ntwo\n")
    tgt = write(tmp_path, "train.de", "eins\n")
    message = raises_naming(src, task="seq2seq", target_path=tgt)
    assert str(tgt) in message and "2 lines" in message


def test_config_errors():
    with pytest.raises(ConfigError):
        read_examples("x", task="translate")
    with pytest.raises(ConfigError):
        read_examples("x", task="classify", format="xml")


def test_config_error_format_cannot_hold_task(tmp_path):
    p = write(tmp_path, "a.tsv", "text\tlabel\na\tb\n")
    with pytest.raises(ConfigError, match="cannot hold"):
        read_examples(p, task="qa", format="tsv")

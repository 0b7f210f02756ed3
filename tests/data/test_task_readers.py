import functools
import hashlib
import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from lmforge.data.task_readers import (
    FORMATS,
    SCHEMES,
    carve_split,
    convert_tags,
    read_examples,
    spans_to_tags,
    tags_to_spans,
)
from lmforge.errors import ConfigError, DataError


def write(tmp_path, name, text, encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return p


# ----------------------------------------------------------------------------- label_text


def test_label_text_sst2_style(tmp_path):
    p = write(tmp_path, "stsa.binary.dev", "0 one long string of cliches .\n\n1 béart is great\r\n")
    assert read_examples(p, task="classify") == [
        {"text": "one long string of cliches .", "label": "0"},
        {"text": "béart is great", "label": "1"},
    ]


def test_label_text_falls_back_to_latin1(tmp_path):
    p = write(tmp_path, "TREC.train", b"LOC:city What is a sister\xf0city ?\nHUM:ind Who was he ?\n")
    assert read_examples(p, task="classify") == [
        {"text": "What is a sister\u00f0city ?", "label": "LOC:city"},
        {"text": "Who was he ?", "label": "HUM:ind"},
    ]
    q = write(tmp_path, "cp1252.txt", b"pos caf\xe9 \x93ok\x94\n")
    assert read_examples(q, task="classify", encoding="cp1252") == [{"text": "caf\u00e9 \u201cok\u201d", "label": "pos"}]


# ----------------------------------------------------------------------------- tsv / csv


def test_tsv_with_header_and_literal_quotes(tmp_path):
    p = write(tmp_path, "train.tsv", 'label\ttext_a\n1\t"好"酒店\n0\t差 评\n')
    assert read_examples(p, task="classify") == [
        {"text": '"好"酒店', "label": "1"},
        {"text": "差 评", "label": "0"},
    ]


def test_tsv_without_header_defaults_to_text_then_label(tmp_path):
    p = write(tmp_path, "train.tsv", "上课时手机响个不停\tnews_edu\n二手房怎么处理？\tnews_house")
    assert read_examples(p, task="classify") == [
        {"text": "上课时手机响个不停", "label": "news_edu"},
        {"text": "二手房怎么处理？", "label": "news_house"},
    ]
    assert read_examples(p, task="classify", columns=[1, 0])[0] == {"text": "news_edu", "label": "上课时手机响个不停"}


def test_tsv_configured_fields_and_text_pair(tmp_path):
    p = write(tmp_path, "pairs.tsv", "id\tq1\tq2\tsame\n7\ta cat\ta feline\t1\n")
    got = read_examples(p, task="classify", text_field="q1", text_pair_field="q2", label_field="same")
    assert got == [{"text": "a cat", "text_pair": "a feline", "label": "1"}]


def test_tsv_seq2seq_without_header(tmp_path):
    p = write(tmp_path, "cmn.train.txt", "Hi.\t嗨。\tCC-BY 2.0 #1\nRun.\t你用跑的。\tCC-BY 2.0 #2\n")
    assert read_examples(p, task="seq2seq") == [
        {"source": "Hi.", "target": "嗨。"},
        {"source": "Run.", "target": "你用跑的。"},
    ]
    assert read_examples(p, task="seq2seq", columns=[1, 0])[0] == {"source": "嗨。", "target": "Hi."}


def test_csv_quoting_and_multiline_cells(tmp_path):
    p = write(tmp_path, "a.csv", 'sentence,label\n"hello, world",pos\n"two\nlines",neg\n')
    assert read_examples(p, task="classify") == [
        {"text": "hello, world", "label": "pos"},
        {"text": "two\nlines", "label": "neg"},
    ]


def test_unlabelled_text_by_columns(tmp_path):
    p = write(tmp_path, "predict.txt", "first text\nsecond text\n")
    got = read_examples(p, task="classify", format="tsv", columns=[0], require_labels=False)
    assert got == [{"text": "first text", "label": None}, {"text": "second text", "label": None}]


def test_header_without_label_column_at_prediction_time(tmp_path):
    p = write(tmp_path, "test.tsv", "text_a\nsome review\n")
    assert read_examples(p, task="classify", require_labels=False) == [{"text": "some review", "label": None}]


# ----------------------------------------------------------------------------- conll / bmes

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
"""


def test_conll_sentences_and_docstart(tmp_path):
    p = write(tmp_path, "train.txt", CONLL)
    assert read_examples(p, task="ner") == [
        {"tokens": ["EU", "rejects", "German"], "tags": ["B-ORG", "O", "B-MISC"]},
        {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]},
        {"tokens": ["BRUSSELS"], "tags": ["B-LOC"]},
    ]
    assert read_examples(p, task="ner", tag_column=1)[1] == {"tokens": ["Peter", "Blackburn"], "tags": ["NNP", "NNP"]}


def test_conll_tokens_only_at_prediction_time(tmp_path):
    p = write(tmp_path, "predict.conll", "EU\nrejects\n\nPeter\n")
    assert read_examples(p, task="ner", require_labels=False) == [
        {"tokens": ["EU", "rejects"], "tags": None},
        {"tokens": ["Peter"], "tags": None},
    ]


def test_bmes(tmp_path):
    p = write(tmp_path, "dev.char.bmes", "高 B-NAME\n勇 E-NAME\n： O\n\n男 S-PRO\n\n\n")
    assert read_examples(p, task="ner") == [
        {"tokens": ["高", "勇", "："], "tags": ["B-NAME", "E-NAME", "O"]},
        {"tokens": ["男"], "tags": ["S-PRO"]},
    ]


# ----------------------------------------------------------------------------- squad

SQUAD = {
    "version": "1.3",
    "data": [
        {
            "title": "梵文",
            "paragraphs": [
                {
                    "context": "在歐洲，梵語的學術研究",
                    "qas": [
                        {
                            "id": "1147-5-1",
                            "question": "哪一地區？",
                            "answers": [{"id": "1", "text": "歐洲", "answer_start": 1}, {"id": "2", "text": "歐洲", "answer_start": 1}],
                        },
                        {"id": "1147-5-2", "question": "什麼研究？", "answers": [{"text": "學術研究", "answer_start": 7}]},
                    ],
                },
                {"context": "第二段", "qas": [{"id": "q3", "question": "第幾段？", "answers": [{"text": "二", "answer_start": 1}]}]},
            ],
        }
    ],
}


def test_squad_one_example_per_question_all_answers(tmp_path):
    p = write(tmp_path, "DRCD_dev.json", json.dumps(SQUAD, ensure_ascii=False))
    assert read_examples(p, task="qa") == [
        {"id": "1147-5-1", "question": "哪一地區？", "context": "在歐洲，梵語的學術研究",
         "answers": [{"text": "歐洲", "answer_start": 1}, {"text": "歐洲", "answer_start": 1}]},
        {"id": "1147-5-2", "question": "什麼研究？", "context": "在歐洲，梵語的學術研究",
         "answers": [{"text": "學術研究", "answer_start": 7}]},
        {"id": "q3", "question": "第幾段？", "context": "第二段", "answers": [{"text": "二", "answer_start": 1}]},
    ]


def test_squad_without_answers_at_prediction_time(tmp_path):
    data = {"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "x", "question": "q?"}]}]}]}
    p = write(tmp_path, "test.json", json.dumps(data))
    assert read_examples(p, task="qa", require_labels=False) == [{"id": "x", "question": "q?", "context": "c", "answers": []}]


def test_qa_jsonl_records(tmp_path):
    p = write(tmp_path, "qa.jsonl", '{"question": "q?", "context": "abc", "answers": {"text": ["b"], "answer_start": [1]}}\n')
    assert read_examples(p, task="qa") == [
        {"id": "0", "question": "q?", "context": "abc", "answers": [{"text": "b", "answer_start": 1}]}
    ]


# ----------------------------------------------------------------------------- parallel


def test_parallel(tmp_path):
    src = write(tmp_path, "val.en", "A man sleeping.\nTwo dogs.\n")
    tgt = write(tmp_path, "val.de", "Ein Mann schläft.\nZwei Hunde.\n\n")
    assert read_examples(src, task="seq2seq", format="parallel", target_path=tgt) == [
        {"source": "A man sleeping.", "target": "Ein Mann schläft."},
        {"source": "Two dogs.", "target": "Zwei Hunde."},
    ]
    # A target_path alone is enough for format="auto".
    assert read_examples(src, task="seq2seq", target_path=tgt)[1] == {"source": "Two dogs.", "target": "Zwei Hunde."}
    assert read_examples(src, task="seq2seq", require_labels=False) == [
        {"source": "A man sleeping.", "target": None},
        {"source": "Two dogs.", "target": None},
    ]


# ----------------------------------------------------------------------------- jsonl / json / alpaca


def test_jsonl_dialogsum_fields_need_no_configuration(tmp_path):
    lines = [{"fname": "dev_0", "dialogue": "#Person1#: Hi.\n#Person2#: Hello.", "summary": "They greet.", "topic": "x"}]
    p = write(tmp_path, "dialogsum.dev.jsonl", "\n".join(json.dumps(r) for r in lines) + "\n\n")
    assert read_examples(p, task="seq2seq") == [{"source": "#Person1#: Hi.\n#Person2#: Hello.", "target": "They greet."}]
    assert read_examples(p, task="seq2seq", source_field="summary", target_field="topic") == [
        {"source": "They greet.", "target": "x"}
    ]


def test_jsonl_classify_numeric_labels_and_missing_labels(tmp_path):
    p = write(tmp_path, "a.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": 0}\n')
    assert read_examples(p, task="classify") == [{"text": "good", "label": "1"}, {"text": "bad", "label": "0"}]
    q = write(tmp_path, "b.jsonl", '{"text": "good", "label": "pos"}\n{"text": "unknown"}\n')
    assert read_examples(q, task="classify", require_labels=False) == [
        {"text": "good", "label": "pos"},
        {"text": "unknown", "label": None},
    ]


def test_json_array_classify_and_ner(tmp_path):
    p = write(tmp_path, "a.json", json.dumps([{"review": "ok", "stars": "5"}]))
    assert read_examples(p, task="classify", text_field="review", label_field="stars") == [{"text": "ok", "label": "5"}]
    q = write(tmp_path, "ner.jsonl", json.dumps({"tokens": ["Paris", "!"], "ner_tags": ["B-LOC", "O"]}) + "\n")
    assert read_examples(q, task="ner") == [{"tokens": ["Paris", "!"], "tags": ["B-LOC", "O"]}]


def test_alpaca_missing_input_is_empty(tmp_path):
    records = [
        {"instruction": "Add.", "input": "1+1", "output": "2"},
        {"instruction": "Say hi.", "output": "Hi!"},
    ]
    p = write(tmp_path, "alpaca.train.json", json.dumps(records))
    assert read_examples(p, task="chat") == [
        {"instruction": "Add.", "input": "1+1", "output": "2"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    ]
    q = write(tmp_path, "predict.json", json.dumps([{"instruction": "Say hi."}]))
    assert read_examples(q, task="chat", format="alpaca", require_labels=False) == [
        {"instruction": "Say hi.", "input": "", "output": None}
    ]


# ----------------------------------------------------------------------------- format detection


@pytest.mark.parametrize(
    "name, text, task, fmt",
    [
        ("data.txt", "1 good film\n0 bad film\n", "classify", "label_text"),
        ("data.txt", "good film\t1\n", "classify", "tsv"),
        ("data.txt", "Hi.\t嗨。\n", "seq2seq", "tsv"),
        ("data.txt", "EU NNP B-ORG\n\nPeter NNP B-PER\n", "ner", "conll"),
        ("data.txt", "高 B-NAME\n勇 M-NAME\n杰 E-NAME\n", "ner", "bmes"),
        ("data.tsv", "EU\tB-ORG\nrejects\tO\n", "ner", "conll"),
        ("data.txt", '{"text": "good", "label": "1"}\n', "classify", "jsonl"),
        ("data.json", json.dumps(SQUAD), "qa", "squad"),
        ("data.json", json.dumps([{"instruction": "i", "input": "", "output": "o"}]), "chat", "alpaca"),
        ("data.json", json.dumps([{"text": "t", "label": "l"}]), "classify", "json"),
    ],
)
def test_auto_format_matches_explicit_format(tmp_path, name, text, task, fmt):
    p = write(tmp_path, name, text)
    assert read_examples(p, task=task) == read_examples(p, task=task, format=fmt)


def test_formats_constant():
    assert FORMATS == ("label_text", "tsv", "csv", "conll", "bmes", "squad", "parallel", "jsonl", "json", "alpaca")


# ----------------------------------------------------------------------------- errors: each names the file


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


def test_error_label_text_single_word(tmp_path):
    p = write(tmp_path, "s.txt", "1 fine\nlonely\n")
    assert "line 2" in raises_naming(p, task="classify", format="label_text")


def test_error_tsv_wrong_column_count(tmp_path):
    p = write(tmp_path, "t.tsv", "label\ttext_a\n1\tok\n0\tbad\textra\n")
    message = raises_naming(p, task="classify")
    assert "line 3" in message and "3 columns, expected 2" in message


def test_error_tsv_missing_field_lists_fields(tmp_path):
    p = write(tmp_path, "t.tsv", "label\tbody\n1\tok\n")
    message = raises_naming(p, task="classify")
    assert "'text'" in message and "'label', 'body'" in message


def test_error_configured_field_without_header(tmp_path):
    p = write(tmp_path, "t.tsv", "good\t1\n")
    assert "'review'" in raises_naming(p, task="classify", text_field="review")


def test_error_tsv_not_utf8(tmp_path):
    p = write(tmp_path, "gbk.tsv", "text\tlabel\n好\t1\n".encode("gbk"))
    assert "line 2" in raises_naming(p, task="classify")


def test_error_conll_one_column(tmp_path):
    p = write(tmp_path, "c.txt", "EU B-ORG\nrejects\n")
    assert "line 2" in raises_naming(p, task="ner", format="conll")


def test_error_conll_first_line_one_column(tmp_path):
    p = write(tmp_path, "c.txt", "EU\nrejects\n")
    assert "line 1" in raises_naming(p, task="ner", format="conll")


def test_error_bmes_extra_column(tmp_path):
    p = write(tmp_path, "c.bmes", "高 x B-NAME\n")
    assert "line 1" in raises_naming(p, task="ner")


def test_error_no_examples(tmp_path):
    p = write(tmp_path, "c.txt", "-DOCSTART- -X- -X- O\n\n")
    assert "no examples" in raises_naming(p, task="ner", format="conll")


def test_error_invalid_jsonl_names_line(tmp_path):
    p = write(tmp_path, "d.jsonl", '{"text": "a", "label": "1"}\n{"text": "b", \n')
    assert "line 2" in raises_naming(p, task="classify")


def test_error_invalid_json_names_line(tmp_path):
    p = write(tmp_path, "d.json", '[\n {"text": "a"},\n {"text" "b"}\n]')
    assert "line 3" in raises_naming(p, task="classify")


def test_error_jsonl_missing_field_lists_fields(tmp_path):
    p = write(tmp_path, "d.jsonl", '{"dialogue": "a", "summary": "b"}\n{"dialogue": "c", "topic": "t"}\n')
    message = raises_naming(p, task="seq2seq")
    assert "line 2" in message and "'dialogue', 'topic'" in message


def test_error_missing_label_when_required(tmp_path):
    p = write(tmp_path, "d.jsonl", '{"text": "good"}\n')
    assert "'label'" in raises_naming(p, task="classify")


def test_error_jsonl_record_not_object(tmp_path):
    p = write(tmp_path, "d.jsonl", '["a", "b"]\n')
    assert "line 1" in raises_naming(p, task="classify")


def test_error_json_not_an_array(tmp_path):
    p = write(tmp_path, "d.json", '{"rows": []}')
    assert "'rows'" in raises_naming(p, task="classify")


def test_error_not_squad(tmp_path):
    p = write(tmp_path, "d.json", json.dumps({"version": "1", "items": []}))
    assert "'data'" in raises_naming(p, task="qa", format="squad")


def test_error_squad_missing_qas(tmp_path):
    p = write(tmp_path, "d.json", json.dumps({"data": [{"paragraphs": [{"context": "c"}]}]}))
    assert "data[0].paragraphs[0]" in raises_naming(p, task="qa")


def test_error_squad_question_without_answers(tmp_path):
    p = write(tmp_path, "d.json", json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q"}]}]}]}))
    assert "no answers" in raises_naming(p, task="qa")


def test_error_ner_tags_length(tmp_path):
    p = write(tmp_path, "d.jsonl", json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    assert "2 tokens but 1 tags" in raises_naming(p, task="ner")


def test_error_parallel_line_counts(tmp_path):
    src = write(tmp_path, "train.en", "one\ntwo\n")
    tgt = write(tmp_path, "train.de", "eins\n")
    message = raises_naming(src, task="seq2seq", target_path=tgt)
    assert str(tgt) in message and "2 lines" in message


def test_error_undetectable_format(tmp_path):
    p = write(tmp_path, "plain.txt", "just a sentence\n")
    assert "format" in raises_naming(p, task="seq2seq")


def test_config_errors():
    with pytest.raises(ConfigError):
        read_examples("x", task="translate")
    with pytest.raises(ConfigError):
        read_examples("x", task="classify", format="xml")


def test_config_error_format_cannot_hold_task(tmp_path):
    p = write(tmp_path, "a.tsv", "text\tlabel\na\tb\n")
    with pytest.raises(ConfigError, match="cannot hold"):
        read_examples(p, task="qa", format="tsv")


# ----------------------------------------------------------------------------- carve_split


def test_carve_tail():
    examples = [{"text": str(i)} for i in range(10)]
    train, valid = carve_split(examples, fraction=0.2)
    assert train == examples[:8] and valid == examples[8:]
    assert carve_split(examples[:3], fraction=0.01) == (examples[:2], examples[2:3])  # at least one


def test_carve_hash_groups_by_key_and_follows_the_documented_rule():
    examples = [{"context": f"passage {i % 40}", "question": f"q{i}"} for i in range(400)]
    train, valid = carve_split(examples, fraction=0.25, how="hash")
    assert {e["context"] for e in train}.isdisjoint({e["context"] for e in valid})
    expected = [e for e in examples if int(hashlib.md5(e["context"].encode()).hexdigest(), 16) % 10_000 < 2500]
    assert valid == expected and len(train) + len(valid) == 400
    assert carve_split(examples, fraction=0.25, how="hash") == (train, valid)
    by_question = carve_split(examples, fraction=0.25, how="hash", key=lambda e: e["question"])
    assert by_question != (train, valid)


def test_carve_errors():
    with pytest.raises(ConfigError):
        carve_split([{"text": "a"}] * 5, fraction=1.0)
    with pytest.raises(ConfigError):
        carve_split([{"text": "a"}] * 5, how="random")
    with pytest.raises(DataError):
        carve_split([{"text": "a"}])
    with pytest.raises(DataError):  # every example has the same key, so one split is empty
        carve_split([{"text": "a"}] * 5, how="hash")


# ----------------------------------------------------------------------------- tag schemes


@pytest.mark.parametrize(
    "scheme, tags",
    [
        ("IOB1", ["I-PER", "I-PER", "B-PER", "O", "I-LOC"]),
        ("IOB2", ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]),
        ("BIO", ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]),
        ("BIOES", ["B-PER", "E-PER", "S-PER", "O", "S-LOC"]),
        ("BMES", ["B-PER", "E-PER", "S-PER", "O", "S-LOC"]),
    ],
)
def test_spans_and_tags_per_scheme(scheme, tags):
    spans = [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5)]
    assert tags_to_spans(tags, scheme) == spans
    assert spans_to_tags(spans, 5, scheme) == tags


def test_inside_tags_per_scheme():
    spans = [("ORG", 1, 5)]
    assert spans_to_tags(spans, 6, "BMES") == ["O", "B-ORG", "M-ORG", "M-ORG", "E-ORG", "O"]
    assert spans_to_tags(spans, 6, "BIOES") == ["O", "B-ORG", "I-ORG", "I-ORG", "E-ORG", "O"]
    assert spans_to_tags(spans, 6, "IOB1") == ["O", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "O"]
    assert convert_tags(["O", "B-ORG", "M-ORG", "M-ORG", "E-ORG", "O"], "BMES", "bio") == [
        "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "O"
    ]


def test_lenient_sequences_decode_like_conlleval():
    assert tags_to_spans(["O", "I-PER", "I-LOC", "O"], "IOB2") == [("PER", 1, 2), ("LOC", 2, 3)]
    assert tags_to_spans(["M-ORG", "E-ORG", "B-ORG", "M-ORG"], "BMES") == [("ORG", 0, 2), ("ORG", 2, 4)]


def test_round_trip_across_all_schemes():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(0, 12)
        spans, i = [], 0
        while i < n:
            if rng.random() < 0.4:
                end = rng.randint(i + 1, n)
                spans.append((rng.choice(["PER", "LOC", "B-X"]), i, end))  # a type may contain "-"
                i = end
            else:
                i += 1
        for scheme in SCHEMES:
            tags = spans_to_tags(spans, n, scheme)
            assert tags_to_spans(tags, scheme) == spans
            for other in SCHEMES:
                assert convert_tags(convert_tags(tags, scheme, other), other, scheme) == tags


@pytest.mark.parametrize(
    "tag, scheme",
    [("X-PER", "BIO"), ("M-PER", "IOB2"), ("I-PER", "BMES"), ("E-PER", "IOB1"), ("B-", "BIOES"), ("PER", "BIO"), (None, "BIO")],
)
def test_malformed_tag(tag, scheme):
    with pytest.raises(DataError, match="malformed"):
        tags_to_spans(["O", tag], scheme)


def test_bad_spans_and_scheme():
    with pytest.raises(DataError, match="overlap"):
        spans_to_tags([("PER", 0, 2), ("LOC", 1, 3)], 3, "BIO")
    with pytest.raises(DataError):
        spans_to_tags([("PER", 2, 4)], 3, "BIO")
    with pytest.raises(ConfigError):
        tags_to_spans(["O"], "IOBES2")


# ----------------------------------------------------------------------------- the shared datasets


def data_path(*parts: str) -> Path:
    root = os.environ.get("LMFORGE_DATA_DIR")
    if not root:
        pytest.skip("LMFORGE_DATA_DIR not set: the shared task datasets live under it")
    return Path(root, *parts)


@functools.cache
def shared(relpath: str, task: str, target: str | None = None) -> list[dict]:
    kwargs = {"target_path": data_path(target)} if target else {}
    return read_examples(data_path(relpath), task=task, **kwargs)


@pytest.mark.parametrize(
    "relpath, task, target, count",
    [
        ("sst2/stsa.binary.train", "classify", None, 6920),
        ("sst2/stsa.binary.dev", "classify", None, 872),
        ("chnsenticorp/train.tsv", "classify", None, 9600),
        ("chnsenticorp/dev.tsv", "classify", None, 1200),
        ("tnews/train.tsv", "classify", None, 53360),
        ("trec/TREC.train", "classify", None, 5452),
        ("conll2003/train.txt", "ner", None, 14041),
        ("conll2003/valid.txt", "ner", None, 3250),
        ("resume_ner/train.char.bmes", "ner", None, 3821),
        ("resume_ner/dev.char.bmes", "ner", None, 463),
        ("cmrc2018/cmrc2018_dev.json", "qa", None, 3219),
        ("drcd/DRCD_dev.json", "qa", None, 3524),
        ("multi30k/train.en", "seq2seq", "multi30k/train.de", 29000),
        ("multi30k/val.en", "seq2seq", "multi30k/val.de", 1014),
        ("tatoeba_cmn_eng/cmn.train.txt", "seq2seq", None, 23298),
        ("tatoeba_cmn_eng/cmn.valid.txt", "seq2seq", None, 2932),
        ("dialogsum/dialogsum.train.jsonl", "seq2seq", None, 12460),
        ("dialogsum/dialogsum.dev.jsonl", "seq2seq", None, 500),
        ("alpaca_demo/alpaca_en_demo.train.json", "chat", None, 799),
        ("alpaca_demo/alpaca_en_demo.valid.json", "chat", None, 100),
        ("alpaca_demo/alpaca_zh_demo.train.json", "chat", None, 800),
        ("alpaca_demo/alpaca_zh_demo.valid.json", "chat", None, 100),
    ],
)
def test_shared_dataset_counts(relpath, task, target, count):
    examples = shared(relpath, task, target)
    assert len(examples) == count
    for example in examples:  # no field is ever empty or mis-typed in these sets
        if task == "classify":
            assert example["text"] and example["label"]
        elif task == "ner":
            assert example["tokens"] and len(example["tags"]) == len(example["tokens"])
        elif task == "qa":
            assert example["id"] and example["question"] and example["answers"]
        elif task == "seq2seq":
            assert example["source"] and example["target"]
        else:
            assert example["instruction"] and example["output"] and isinstance(example["input"], str)


def test_shared_classification_labels():
    assert Counter(e["label"] for e in shared("sst2/stsa.binary.train", "classify")) == {"0": 3310, "1": 3610}
    assert Counter(e["label"] for e in shared("chnsenticorp/dev.tsv", "classify")) == {"0": 610, "1": 590}
    coarse = Counter(e["label"].split(":")[0] for e in shared("trec/TREC.train", "classify"))
    assert coarse == {"DESC": 1162, "ENTY": 1250, "ABBR": 86, "HUM": 1223, "NUM": 896, "LOC": 835}
    names = [json.loads(line)["label_desc"] for line in data_path("tnews", "labels.json").read_text("utf-8").splitlines()]
    assert {e["label"] for e in shared("tnews/train.tsv", "classify")} == set(names)
    train, valid = carve_split(shared("tnews/train.tsv", "classify"), fraction=0.1)
    assert (len(train), len(valid)) == (48024, 5336)


def test_shared_ner_tags_round_trip():
    conll = shared("conll2003/train.txt", "ner")
    assert sum(len(e["tokens"]) for e in conll) == 203_621
    assert {t for e in conll for t in e["tags"]} == {"O"} | {f"{p}-{k}" for p in "BI" for k in ("PER", "ORG", "LOC", "MISC")}
    assert all(convert_tags(convert_tags(e["tags"], "IOB2", "BIOES"), "BIOES", "IOB2") == e["tags"] for e in conll)
    resume = shared("resume_ner/train.char.bmes", "ner")
    changed = [e["tags"] for e in resume if convert_tags(convert_tags(e["tags"], "BMES", "BIO"), "BIO", "BMES") != e["tags"]]
    # Four training sentences cut an ORG entity at the sentence boundary (they start or end
    # on M-ORG); every well-formed sentence survives the round trip unchanged.
    assert len(changed) == 4 and all(tags[0].startswith("M-") or tags[-1].startswith("M-") for tags in changed)


def test_shared_qa_answers_and_hash_split():
    cmrc = shared("cmrc2018/cmrc2018_dev.json", "qa")
    assert all(len(e["answers"]) == 3 for e in cmrc)
    drcd = shared("drcd/DRCD_dev.json", "qa")
    assert all(len(e["answers"]) == 2 and set(e["answers"][0]) == {"text", "answer_start"} for e in drcd)
    train, valid = carve_split(drcd, fraction=0.1, how="hash")
    assert {e["context"] for e in train}.isdisjoint({e["context"] for e in valid})
    assert 0.05 < len(valid) / len(drcd) < 0.15

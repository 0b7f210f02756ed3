"""Task-data formats: each format read by example, format detection, the reader registry and
reading options."""
import dataclasses
import json

import pytest

from lmforge.data.formats import FORMATS, ReadOptions, read_examples, registry
from lmforge.errors import ConfigError

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
    assert FORMATS == ("label_text", "text", "tsv", "csv", "conll", "bmes", "squad", "parallel", "jsonl", "json",
                       "alpaca")


def test_read_options_object_and_keyword_overrides(tmp_path):
    p = write(tmp_path, "pairs.tsv", "a\tb\nc\td\n")
    options = ReadOptions(task="classify", header=False)
    assert read_examples(p, options) == read_examples(p, task="classify", header=False) == [
        {"text": "a", "label": "b"},
        {"text": "c", "label": "d"},
    ]
    assert read_examples(p, options, columns=[1, 0])[0] == {"text": "b", "label": "a"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.task = "ner"


@pytest.fixture
def restored_registry():
    formats, claims = dict(registry.FORMAT_READERS), list(registry.CLAIMS)
    yield
    registry.FORMAT_READERS.clear()
    registry.FORMAT_READERS.update(formats)
    registry.CLAIMS[:] = claims


def test_a_registered_format_is_detected_and_read(tmp_path, restored_registry):
    @registry.register_format("shouting", tasks=("classify",),
                              claims=[(registry.BY_SUFFIX, lambda file: file.suffix == ".loud")])
    def read_shouting(file):
        return [{"text": line.lower(), "label": "loud"} for _, line in file.lines() if line]

    p = write(tmp_path, "cries.loud", "HELLO\nTHERE\n")
    assert read_examples(p, task="classify") == [{"text": "hello", "label": "loud"}, {"text": "there", "label": "loud"}]
    assert "shouting" in registry.formats_for("classify")
    with pytest.raises(ConfigError, match="cannot hold"):
        read_examples(p, task="ner", format="shouting")
    with pytest.raises(ValueError, match="twice"):
        registry.register_format("shouting", tasks=("classify",))(read_shouting)


def test_formats_for_lists_a_tasks_own_formats_first():
    assert registry.formats_for("seq2seq") == ("parallel", "tsv", "csv", "jsonl", "json")
    assert registry.formats_for("chat") == ("alpaca", "jsonl", "json")

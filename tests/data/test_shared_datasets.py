"""The shared task datasets under LMFORGE_DATA_DIR, read in full: counts, labels, tags and splits."""
import functools
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from lmforge.data.formats import read_examples
from lmforge.data.splits import carve_split
from lmforge.data.tagging import convert_tags


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

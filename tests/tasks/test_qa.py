"""Extractive QA: context windows (against the `tokenizers` library's own overflow windows), gold
span labels, span post-processing (against a brute-force search), a fine-tuning run that learns a
trivial rule, prediction files, the pipeline, and a smoke run on CMRC 2018 when the data is present."""
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import tokenizers

from lmforge.config import StartConfig, TaskDataConfig, TrainConfig
from lmforge.data.tokenizers import train_tokenizer
from lmforge.eval.generation import squad_scores
from lmforge.tasks.base import TaskSettings
from lmforge.tasks.qa import QATask, best_answer

WORDS = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "iota", "kappa", "lambda", "mu", "nu", "xi",
    "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega",
]
ANSWERS = [
    "Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Warsaw", "Lisbon", "Dublin", "Oslo",
    "Athens", "Sofia", "Riga", "Tallinn", "Vilnius",
]


def _task(tok, family, max_length=48, doc_stride=12):
    data = TaskDataConfig(train="-", max_length=max_length, doc_stride=doc_stride)
    return QATask(TaskSettings(data=data), tok, family, extra={"block_size": 512})


def _long_examples(n=6, seed=0):
    """Long contexts with the answer at different depths (start, middle, end, window edges)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        before = " ".join(rng.choice(WORDS) + rng.choice(["", ",", "."]) for _ in range(rng.randint(0, 250)))
        after = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 120)))
        answer = rng.choice(ANSWERS) + (" " + rng.choice(ANSWERS) if i % 2 else "")
        context = f"{before} The capital is {answer}. {after}".strip()
        out.append({"id": f"q{i}", "question": "What is the capital?", "context": context,
                    "answers": [{"text": answer, "answer_start": context.index(f"is {answer}") + 3}]})
    return out


@pytest.mark.parametrize("family,kind", [("bert", "wordpiece"), ("gpt", "bpe")])
def test_windows_cover_the_context_and_label_the_gold_span(family, kind):
    examples = _long_examples()
    texts = [e["context"] for e in examples] + ["What is the capital?"]
    tok = train_tokenizer(kind, texts, 300 if kind != "bpe" else 420)
    task = _task(tok, family)
    features = task.encode_all(examples)
    for index, example in enumerate(examples):
        context, gold = example["context"], example["answers"][0]["text"]
        mine = [f for f in features if f["example_index"] == index]
        assert all(len(f["input_ids"]) <= 48 for f in mine)
        assert len(mine) > 1 or len(tok.encode(context)) < 40
        covered = np.zeros(len(context), dtype=bool)
        previous_tokens = None
        for f in mine:
            spans = [o for o in f["offsets"] if o is not None]
            for s, e in spans:
                covered[s:e] = True
            if previous_tokens is not None:  # each window starts doc_stride tokens before the previous one ends
                assert spans[:12] == previous_tokens[-12:]
            previous_tokens = spans
        assert all(covered[i] or context[i].isspace() for i in range(len(context)))
        labelled = [f for f in mine if f["start_positions"] != 0]
        assert labelled, "the answer lies inside at least one window"
        a0 = example["answers"][0]["answer_start"]
        for f in mine:
            s, e = f["start_positions"], f["end_positions"]
            ctx_offsets = [o for o in f["offsets"] if o is not None]
            inside = ctx_offsets[0][0] <= a0 and a0 + len(gold) <= ctx_offsets[-1][1]
            assert (s != 0) == inside
            if s:
                assert f["offsets"][s] is not None and f["offsets"][e] is not None
                assert context[f["offsets"][s][0]:f["offsets"][e][1]].strip() == gold
                assert tok.decode(f["input_ids"][s:e + 1]).strip() == gold


@pytest.mark.skipif(tokenizers.__version__ in ("0.23.1", "0.23.2"),
                    reason="tokenizers 0.23.1-0.23.2 return too few overflow windows "
                           "(huggingface/tokenizers#2091), so they cannot serve as the reference")
def test_bert_windows_equal_the_tokenizers_overflow_windows():
    examples = _long_examples(seed=3)
    tok = train_tokenizer("wordpiece", [e["context"] for e in examples], 300)
    reference = tokenizers.Tokenizer.from_str(tok.hf.to_str())
    reference.enable_truncation(48, stride=12, strategy="only_second")
    task = _task(tok, "bert")
    for example in examples:
        mine = task.encode_all([example])
        enc = reference.encode(example["question"], example["context"])
        theirs = [enc, *enc.overflowing]
        assert [f["input_ids"] for f in mine] == [r.ids for r in theirs]
        assert [f["token_type_ids"] for f in mine] == [r.type_ids for r in theirs]


def test_chinese_context_is_labelled_per_character():
    context = "北京是中国的首都，" * 30 + "上海位于长江入海口。" + "天津是直辖市。" * 20
    answer = "长江入海口"
    example = {"id": "z", "question": "上海位于哪里？", "context": context,
               "answers": [{"text": answer, "answer_start": context.index(answer)}]}
    tok = train_tokenizer("wordpiece", [context, example["question"]], 200)
    features = _task(tok, "bert", max_length=64, doc_stride=20).encode_all([example])
    hits = [f for f in features if f["start_positions"]]
    assert hits and all(f["end_positions"] - f["start_positions"] + 1 == len(answer) for f in hits)
    assert all(tok.decode(f["input_ids"][f["start_positions"]:f["end_positions"] + 1]).replace(" ", "") == answer
               for f in hits)


def test_labels_of_unanswerable_shifted_and_missing_answers():
    examples = _long_examples(n=1)
    tok = train_tokenizer("wordpiece", [examples[0]["context"]], 300)
    task = _task(tok, "bert")
    base = examples[0]
    gold = base["answers"][0]
    shifted = {**base, "answers": [{"text": gold["text"], "answer_start": gold["answer_start"] + 7}]}
    assert ([(f["start_positions"], f["end_positions"]) for f in task.encode_all([shifted])]
            == [(f["start_positions"], f["end_positions"]) for f in task.encode_all([base])])
    missing = {**base, "answers": [{"text": "Atlantis", "answer_start": 0}]}
    assert {f["start_positions"] for f in task.encode_all([missing])} == {-100}
    unanswerable = {**base, "answers": []}
    assert {(f["start_positions"], f["end_positions"]) for f in task.encode_all([unanswerable])} == {(0, 0)}
    assert all("start_positions" not in f for f in task.encode_all([base], labels=False))


def test_best_answer_picks_the_best_valid_span():
    context = "The cat sat on the mat today"
    words = [(0, 3), (4, 7), (8, 11), (12, 14), (15, 18), (19, 22), (23, 28)]
    # Two windows: [q q ctx0..ctx4 sep] and [q q ctx2..ctx6 sep].
    offsets = [[None, None, *words[0:5], None], [None, None, *words[2:7], None]]
    neg = -10.0
    s1 = np.full(8, neg); e1 = np.full(8, neg)
    s1[0] = e1[0] = 50.0              # the question token: outside the context, never an answer
    s1[5] = 9.0; e1[3] = 9.0          # best start ("on") after best end ("cat"): invalid
    s1[4] = 4.0; e1[5] = 1.0          # "sat on" = 5.0, "on" = 10.0
    s2 = np.full(8, neg); e2 = np.full(8, neg)
    s2[3] = 5.0; e2[5] = 5.5          # "on the mat" = 10.5, the winner
    got = best_answer(context, offsets, [s1, s2], [e1, e2])
    assert got["answer"] == "on the mat" and (got["start"], got["end"]) == (12, 22)
    assert context[got["start"]:got["end"]] == got["answer"] and 0.0 < got["score"] <= 1.0
    # A longer span scoring higher is dropped when it exceeds max_answer_tokens.
    s2[2] = 20.0
    assert best_answer(context, offsets, [s1, s2], [e1, e2])["answer"] == "sat on the mat"
    assert best_answer(context, offsets, [s1, s2], [e1, e2], max_answer_tokens=3)["answer"] == "on the mat"
    assert best_answer(context, [[None, None]], [np.zeros(2)], [np.zeros(2)])["answer"] == ""


def test_best_answer_equals_a_brute_force_search():
    rng = np.random.default_rng(0)
    context = " ".join(f"w{i}" for i in range(40))
    words, pos = [], 0
    for w in context.split(" "):
        words.append((pos, pos + len(w)))
        pos += len(w) + 1
    for _ in range(30):
        offsets, starts, ends = [], [], []
        for begin in (0, 10, 20):  # windows of 15 context tokens: the 20-best covers them all
            offsets.append([None, *words[begin:begin + 15], None])
            starts.append(rng.normal(size=17))
            ends.append(rng.normal(size=17))
        best = max((starts[w][s] + ends[w][e], offsets[w][s][0], offsets[w][e][1])
                   for w in range(3) for s in range(1, 16) for e in range(s, min(s + 5, 16)))
        got = best_answer(context, offsets, starts, ends, max_answer_tokens=5)
        assert (got["start"], got["end"]) == best[1:]


# ---------------------------------------------------------------- fine-tuning on a trivial rule
def _squad_file(path: Path, n: int, seed: int, off_rule: int = 0) -> list[dict]:
    """The answer is the word after "is" (two questions per passage), except that with `off_rule` k every
    k-th passage has the word before "is" as its gold answer, which the rule cannot get right."""
    rng = random.Random(seed)
    data, examples = [], []
    for p in range(n // 2):
        before = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 18)))
        after = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 18)))
        answer = rng.choice(ANSWERS)
        context = f"{before} is {answer} {after}"
        if off_rule and p % off_rule == 0:
            gold = {"text": before.split(" ")[-1], "answer_start": len(before) - len(before.split(" ")[-1])}
        else:
            gold = {"text": answer, "answer_start": len(before) + 4}
        qas = []
        for k in range(2):
            qid = f"p{seed}-{p}-{k}"
            question = rng.choice(["what is it?", "which one is it?", "name it?"]) + " " + rng.choice(WORDS)
            answers = [gold]
            qas.append({"id": qid, "question": question, "answers": answers})
            examples.append({"id": qid, "question": question, "context": context, "answers": answers})
        data.append({"title": "t", "paragraphs": [{"context": context, "qas": qas}]})
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return examples


def test_question_match_marks_context_tokens_that_occur_in_the_question():
    examples = _long_examples(seed=5)
    tok = train_tokenizer("wordpiece", [e["context"] for e in examples] + ["What is the capital?"], 300)
    data = TaskDataConfig(train="-", max_length=48, doc_stride=12, question_match=True)
    task = QATask(TaskSettings(data=data), tok, "bert", extra={"block_size": 512})
    plain = _task(tok, "bert")
    question = set(tok.encode(examples[0]["question"]))
    for mine, base in zip(task.encode_all(examples), plain.encode_all(examples)):
        assert mine["input_ids"] == base["input_ids"] and mine["start_positions"] == base["start_positions"]
        for token, offset, got, want in zip(mine["input_ids"], mine["offsets"], mine["token_type_ids"],
                                            base["token_type_ids"]):
            if offset is None:  # question and separators keep their segment ids
                assert got == want
            else:
                assert got == (2 if token in question else 1)
    assert any(2 in f["token_type_ids"] for f in task.encode_all(examples))


def test_question_match_gives_a_fresh_bert_a_third_segment_type_and_refuses_other_models(tmp_path):
    from lmforge import api
    from lmforge.errors import ConfigError
    from lmforge.models.registry import load_model

    _squad_file(tmp_path / "train.json", 40, seed=1)
    data = TaskDataConfig(train=str(tmp_path / "train.json"), val_fraction=0.25, max_length=32, doc_stride=8,
                          question_match=True)
    train = TrainConfig(batch_size=8, max_steps=2, eval_interval=2, log_interval=1, checkpoint_interval=2,
                        precision="fp32", progress=False)
    api.finetune("qa", data=data, model=StartConfig(init="bert-debug", vocab_size=200), out=tmp_path / "run",
                 train=train)
    assert load_model(tmp_path / "run").backbone.config.type_vocab_size == 3
    # prediction reads the setting back from the run and feeds the same segment ids
    assert api.predict(tmp_path / "run", str(tmp_path / "train.json"), output=str(tmp_path / "pred.jsonl")) == 40
    with pytest.raises(ConfigError, match="question_match"):
        api.finetune("qa", data=data, model=StartConfig(init="debug", vocab_size=400), out=tmp_path / "gpt",
                     train=train)
    assert not (tmp_path / "gpt").exists()


def test_question_match_adds_a_segment_type_to_a_pretrained_bert_without_changing_it():
    import torch

    from lmforge.models.registry import build_model
    from lmforge.tasks.qa import QATask

    torch.manual_seed(0)
    bert = build_model("bert-debug").eval()
    assert bert.config.type_vocab_size == 2
    ids = torch.randint(5, bert.config.vocab_size, (2, 12))
    types = torch.tensor([[0] * 5 + [1] * 7] * 2)
    with torch.no_grad():
        before = bert.features(ids, token_type_ids=types)
        QATask.check_backbone(bert, TaskDataConfig(train="-", question_match=True))
        assert bert.config.type_vocab_size == 3 and bert.embeddings.wtt.num_embeddings == 3
        assert torch.equal(bert.features(ids, token_type_ids=types), before)
        # the new type starts as the passage type, so marking matches changes nothing until training
        matched = types.clone()
        matched[:, 6:9] = 2
        assert torch.equal(bert.features(ids, token_type_ids=matched), before)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    from lmforge import api

    root = tmp_path_factory.mktemp("qa")
    _squad_file(root / "train.json", 400, seed=1)
    valid = _squad_file(root / "valid.json", 80, seed=2, off_rule=4)
    # Windows of at most 32 tokens: most passages span several, so evaluation must pick across windows.
    summary = api.finetune(
        "qa", data=TaskDataConfig(train=str(root / "train.json"), valid=str(root / "valid.json"), max_length=32,
                                  doc_stride=8),
        model=StartConfig(init="bert-debug", vocab_size=200), out=root / "run",
        train=TrainConfig(batch_size=16, max_steps=60, lr=2e-3, warmup_steps=5, eval_interval=60, log_interval=20,
                          checkpoint_interval=60, precision="fp32", progress=False, seed=0))
    return root, summary, valid


def test_finetune_learns_the_trivial_rule(tuned):
    root, summary, _ = tuned
    metrics = summary["metrics"]
    assert summary["main_metric"] == "f1" and summary["f1"] == metrics["f1"]
    assert {"val_loss", "exact_match", "f1"} <= set(metrics)
    # 1 in 4 validation passages breaks the rule, so 75 is the most the rule can score.
    assert 50 < metrics["exact_match"] <= 75 and metrics["f1"] >= metrics["exact_match"]
    log = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["val_loss"] for r in log if "val_loss" in r]
    assert losses[-1] < losses[0]


def test_predict_writes_one_answer_per_question_in_order_and_matches_the_summary(tuned):
    from lmforge import api

    root, summary, valid = tuned
    # Prediction input: the same questions without answers, in a different order.
    shuffled = list(reversed(valid))
    raw = {"data": [{"paragraphs": [{"context": e["context"], "qas": [{"id": e["id"], "question": e["question"]}]}]}
                    for e in shuffled]}
    (root / "input.json").write_text(json.dumps(raw), encoding="utf-8")
    n = api.predict(root / "run", str(root / "input.json"), output=str(root / "pred.jsonl"), batch_size=16)
    rows = [json.loads(line) for line in (root / "pred.jsonl").read_text().splitlines()]
    assert n == len(rows) == len(valid)
    assert [r["id"] for r in rows] == [e["id"] for e in shuffled]
    for r, e in zip(rows, shuffled):
        assert {"id", "answer"} <= set(r) and r["answer"] == e["context"][r["start"]:r["end"]]
    scores = squad_scores({r["id"]: r["answer"] for r in rows}, valid)
    assert scores["exact_match"] == pytest.approx(summary["metrics"]["exact_match"])
    assert scores["f1"] == pytest.approx(summary["metrics"]["f1"])


def test_pipeline_takes_question_and_context(tuned):
    from lmforge import api

    root, _, valid = tuned
    qa = api.pipeline("question-answering", model=root / "run")
    e = valid[0]
    one = qa(question=e["question"], context=e["context"])
    assert set(one) == {"answer", "score", "start", "end"}
    assert one["answer"] == e["context"][one["start"]:one["end"]] and 0.0 <= one["score"] <= 1.0
    many = qa(question=[x["question"] for x in valid[:3]], context=[x["context"] for x in valid[:3]])
    assert isinstance(many, list) and len(many) == 3 and many[0] == one
    shared = qa(question=["what is it?", "name it?"], context=e["context"])
    assert len(shared) == 2 and all(r["answer"] == e["context"][r["start"]:r["end"]] for r in shared)


def test_a_decoder_learns_the_rule_from_its_left_context(tmp_path):
    from lmforge import api

    _squad_file(tmp_path / "train.json", 300, seed=3)
    _squad_file(tmp_path / "valid.json", 40, seed=4)
    summary = api.finetune(
        "qa", data=TaskDataConfig(train=str(tmp_path / "train.json"), valid=str(tmp_path / "valid.json"),
                                  max_length=64),
        model=StartConfig(init="debug", vocab_size=400), out=tmp_path / "run",
        train=TrainConfig(batch_size=16, max_steps=60, lr=2e-3, warmup_steps=5, eval_interval=60, log_interval=20,
                          checkpoint_interval=60, precision="fp32", progress=False, seed=0))
    assert summary["metrics"]["exact_match"] > 50


# ---------------------------------------------------------------- real data
def test_cmrc2018_smoke(tmp_path):
    root = os.environ.get("LMFORGE_DATA_DIR")
    if not root or not (Path(root) / "cmrc2018" / "cmrc2018_dev.json").is_file():
        pytest.skip("LMFORGE_DATA_DIR is not set or has no cmrc2018/cmrc2018_dev.json")
    from lmforge import api
    from lmforge.data.formats import read_examples
    from lmforge.data.splits import carve_split

    summary = api.finetune(
        "qa", data=TaskDataConfig(train="cmrc2018/cmrc2018_dev.json", val_split="hash", val_fraction=0.1,
                                  max_train_examples=100, max_valid_examples=30, max_length=128, doc_stride=32),
        model=StartConfig(init="bert-debug", vocab_size=2000), out=tmp_path / "run",
        train=TrainConfig(batch_size=8, max_steps=20, eval_interval=20, log_interval=10, checkpoint_interval=20,
                          progress=False))
    run = tmp_path / "run"
    for name in ("config.yaml", "config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    written = json.loads((run / "summary.json").read_text())
    assert written["valid_split"].startswith("hash") and written["train_examples"] == 100
    assert {"val_loss", "exact_match", "f1"} <= set(written["metrics"]) and written["main_metric"] == "f1"
    # The carve keeps every passage on one side.
    examples = read_examples(Path(root) / "cmrc2018" / "cmrc2018_dev.json", task="qa")
    train, valid = carve_split(examples, fraction=0.1, how="hash", key=QATask.split_key)
    assert not {e["context"] for e in train} & {e["context"] for e in valid}
    assert summary["valid_examples"] == 30

"""Translation and summarization: input layouts per family, the loss against a hand computation,
learning a tiny copy task, beam vs greedy, metrics against sacrebleu / rouge-score, predict and pipeline."""
import json
import math
import os
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import DecodeConfig, StartConfig, TaskDataConfig, TrainConfig
from lmforge.data.collate import collate_seq2seq
from lmforge.data.tokenizers import train_tokenizer
from lmforge.errors import ConfigError
from lmforge.models.heads import TaskModel, TaskModelConfig
from lmforge.models.registry import build_model, preset_config
from lmforge.tasks.base import TaskSettings
from lmforge.tasks.seq2seq import SummarizationTask, TranslationTask

WORDS = "red blue green black white cat dog fish".split()
TEXTS = ["the cat sat on the mat", "der Hund schläft im Garten", "我们今天去公园散步", "a b c d e f g"] * 5


def _tokenizer():
    return train_tokenizer("bpe", TEXTS, 300)


def _task(cls=TranslationTask, family="t5", **data):
    settings = TaskSettings(data=TaskDataConfig(train="-", **data))
    return cls(settings, _tokenizer(), family, extra={"block_size": 64})


def _tiny_model(tok, family):
    preset = "t5-debug" if family == "t5" else "debug"
    ids = {"pad_token_id": tok.pad_id, "decoder_start_token_id": tok.pad_id} if family == "t5" else {}
    backbone = build_model(preset_config(preset, vocab_size=tok.vocab_size, block_size=64, **ids))
    return TaskModel(TaskModelConfig(task="translate", head="lm", backbone=backbone.config.to_dict()),
                     backbone=backbone).eval()


# ---------------------------------------------------------------- layouts
def test_t5_layout_matches_the_seq2seq_objective():
    task = _task(max_length=6, max_target_length=4)
    tok, eos, pad = task.tokenizer, task.tokenizer.eos_id, task.tokenizer.pad_id
    examples = [{"source": "the cat sat on the mat", "target": "der Hund schläft im Garten"},
                {"source": "a b", "target": "我们"}]
    features = [task.encode(e) for e in examples]
    src0, tgt0 = tok.encode(examples[0]["source"]), tok.encode(examples[0]["target"])
    assert len(src0) > 5 and len(tgt0) > 3  # both sides really get truncated
    assert features[0]["input_ids"] == src0[:5] + [eos]
    assert features[0]["attention_mask"] == [1] * 6
    assert features[0]["labels"] == tgt0[:3] + [eos]
    assert features[0]["decoder_input_ids"] == [pad] + tgt0[:3]
    assert features[1]["labels"] == tok.encode("我们") + [eos]
    batch = task.collate(features)
    reference = collate_seq2seq([(f["input_ids"], f["labels"]) for f in features], pad_id=pad, decoder_start_id=pad)
    for key in ("input_ids", "attention_mask", "labels", "decoder_input_ids"):
        assert torch.equal(batch[key], reference[key]), key
    assert task.counts(batch)["lm"] == sum(len(f["labels"]) for f in features)
    # no target (prediction): source only
    assert task.encode({"source": "a b", "target": None}) == {"input_ids": tok.encode("a b") + [eos],
                                                              "attention_mask": [1] * (len(tok.encode("a b")) + 1)}


def test_gpt_layout_masks_prompt_and_source():
    task = _task(family="gpt", prompt="translate: ", max_length=40, max_target_length=8)
    tok, eos = task.tokenizer, task.tokenizer.eos_id
    ex = {"source": "the cat sat", "target": "der Hund"}
    f = task.encode(ex)
    prompt, src, tgt = tok.encode("translate: "), tok.encode("the cat sat"), tok.encode("der Hund")
    full = prompt + src + [eos] + tgt + [eos]
    assert f["input_ids"] == full[:-1]
    assert f["labels"] == [-100] * (len(prompt) + len(src)) + tgt + [eos]
    assert set(f) == {"input_ids", "labels"}
    assert task.encode({**ex, "target": None}) == {"input_ids": prompt + src + [eos]}
    # a long source is cut so that context + target fit the model (block 64, target <= 8)
    long = task.encode({"source": "the cat sat on the mat " * 20, "target": "der Hund " * 20})
    assert len(long["input_ids"]) + 1 <= 64 and long["labels"][-1] == eos
    assert sum(label != -100 for label in long["labels"]) == 8


def test_gpt_prompt_longer_than_the_source_budget_is_a_config_error():
    task = _task(family="gpt", prompt="the cat sat on the mat " * 10, max_length=8)
    with pytest.raises(ConfigError):
        task.encode({"source": "a", "target": "b"})


@pytest.mark.parametrize("family", ["t5", "gpt"])
def test_loss_is_the_target_token_cross_entropy_sum(family):
    torch.manual_seed(0)
    task = _task(family=family, prompt="tr: " if family == "gpt" else "")
    model = _tiny_model(task.tokenizer, family)
    examples = [{"source": "the cat sat on", "target": "der Hund"}, {"source": "a b c d e f", "target": "我们今天"}]
    batch = task.collate([task.encode(e) for e in examples])
    with torch.no_grad():
        got = float(task(model, batch)["lm"])
    want, n = 0.0, 0
    tok, eos = task.tokenizer, task.tokenizer.eos_id
    with torch.no_grad():
        for e in examples:
            tgt = tok.encode(e["target"]) + [eos]
            if family == "t5":
                src = torch.tensor([tok.encode(e["source"]) + [eos]])
                logits = model.backbone(src, decoder_input_ids=torch.tensor([[tok.pad_id] + tgt[:-1]]))[0]
                want += float(F.cross_entropy(logits, torch.tensor(tgt), reduction="sum"))
            else:
                context = tok.encode("tr: ") + tok.encode(e["source"]) + [eos]
                seq = torch.tensor([context + tgt])
                logits = model.backbone(seq)[0]
                for j, t in enumerate(tgt):  # the logits before target token j predict it
                    want -= float(torch.log_softmax(logits[len(context) + j - 1], -1)[t])
            n += len(tgt)
    assert got == pytest.approx(want, rel=1e-4)
    assert int(task.counts(batch)["lm"]) == n



@pytest.mark.parametrize("family", ["t5", "gpt"])
def test_label_smoothing_shapes_the_training_loss_only(family):
    """Training loss with smoothing eps = (1 - eps) * NLL + eps * mean over the vocabulary of -log p,
    per target token (computed here from the plain loss and the logits); validation keeps the plain loss."""
    from dataclasses import replace

    from lmforge.config import MethodConfig

    torch.manual_seed(0)
    plain = _task(family=family, prompt="tr: " if family == "gpt" else "")
    smoothed = type(plain)(replace(plain.settings, method=MethodConfig(label_smoothing=0.2)), plain.tokenizer, family,
                           extra=plain.extra)
    model = _tiny_model(plain.tokenizer, family)
    examples = [{"source": "the cat sat on", "target": "der Hund"}, {"source": "a b c d e f", "target": "我们今天"}]
    batch = plain.collate([plain.encode(e) for e in examples])
    with torch.no_grad():
        nll = float(plain(model, batch)["lm"])
        assert float(smoothed(model, batch)["lm"]) == pytest.approx(nll, rel=1e-6)  # model.eval(): plain loss
        if family == "t5":
            logits = model.backbone(batch["input_ids"], attention_mask=batch["attention_mask"],
                                    decoder_input_ids=batch["decoder_input_ids"])
        else:
            logits = model.backbone(batch["input_ids"])
        keep = batch["labels"] != -100
        uniform = float(-torch.log_softmax(logits.float(), -1)[keep].mean(-1).sum())
        model.train()  # no dropout in the tiny model: only the loss changes
        got = float(smoothed(model, batch)["lm"])
    assert got == pytest.approx(0.8 * nll + 0.2 * uniform, rel=1e-4)


def test_generation_subset_spreads_over_sorted_sets():
    from lmforge.tasks.seq2seq import generation_subset

    items = [{"i": i} for i in range(10)]
    assert generation_subset(items, 20) == items
    assert [e["i"] for e in generation_subset(items, 4)] == [0, 2, 5, 7]
    assert [e["i"] for e in generation_subset(items, 10)] == list(range(10))


def test_metric_language():
    assert _task(target_lang="zh").metric_lang() == "zh"
    assert _task(target_lang="de").metric_lang() == "en"
    assert _task().metric_lang() == "auto"


# ---------------------------------------------------------------- a tiny copy task, trained
def _copy_pairs(n, seed):
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 4))]
        pairs.append((" ".join(words), " ".join(words)))
    return pairs


@pytest.fixture(scope="module")
def copy_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("copy")
    for name, n, seed in (("train", 1600, 0), ("valid", 24, 1)):
        pairs = _copy_pairs(n, seed)
        (d / f"{name}.src").write_text("".join(s + "\n" for s, _ in pairs))
        (d / f"{name}.tgt").write_text("".join(t + "\n" for _, t in pairs))
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in pairs))
    return d


def _train(data, preset, out, steps, lr):
    from lmforge.runs.finetune import finetune

    train = TrainConfig(max_steps=steps, batch_size=16, lr=lr, warmup_steps=5, weight_decay=0.0, eval_interval=1000,
                        log_interval=10, checkpoint_interval=1000, keep_last=1, progress=False, seed=0, device="cpu")
    start = StartConfig(init=preset, vocab_size=300, n_embd=128)
    return finetune("translate", data=data, model=start, out=out, train=train,
                    decode=DecodeConfig(max_new_tokens=12))


@pytest.fixture(scope="module")
def t5_run(copy_data, tmp_path_factory):
    d = copy_data
    data = TaskDataConfig(train=str(d / "train.src"), train_target=str(d / "train.tgt"), valid=str(d / "valid.src"),
                          valid_target=str(d / "valid.tgt"), format="parallel", max_length=16, max_target_length=16)
    out = tmp_path_factory.mktemp("t5") / "run"
    return out, _train(data, "t5-debug", out, 120, 3e-3)


@pytest.fixture(scope="module")
def gpt_run(copy_data, tmp_path_factory):
    d = copy_data
    data = TaskDataConfig(train=str(d / "train.jsonl"), valid=str(d / "valid.jsonl"), max_length=16,
                          max_target_length=16, prompt="copy: ")
    out = tmp_path_factory.mktemp("gpt") / "run"
    return out, _train(data, "debug", out, 100, 3e-3)


def _initial(run_dir):
    first = json.loads((Path(run_dir) / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0
    return first


@pytest.mark.parametrize("which,least", [("t5_run", 10.0), ("gpt_run", 50.0)])
def test_learns_to_copy(which, least, request):
    run_dir, summary = request.getfixturevalue(which)
    m = summary["metrics"]
    assert summary["main_metric"] == "bleu" and summary["bleu"] == m["bleu"]
    assert m["generated_examples"] == 24
    # T5 gets the words quickly but their order (relative positions only) more slowly than GPT.
    assert m["bleu"] > least and m["chrf"] > 30.0, m["samples"]
    assert m["bleu"] > _initial(run_dir)["bleu"] + 8.0
    assert m["val_loss"] < _initial(run_dir)["val_loss"] / 2


def _valid(copy_data):
    return [{"source": s, "target": t} for s, t in _copy_pairs(24, 1)]


@pytest.mark.parametrize("which", ["t5_run", "gpt_run"])
def test_metrics_equal_sacrebleu_and_rouge_on_the_predictions(which, request, copy_data):
    import sacrebleu
    from rouge_score.rouge_scorer import RougeScorer

    from lmforge.runs.rundir import load_task_run

    run_dir, summary = request.getfixturevalue(which)
    model, task = load_task_run(run_dir)
    examples = _valid(copy_data)
    with torch.no_grad():
        preds = [a["output"] for a in task.predict(model, examples, batch_size=7)]
    refs = [e["target"] for e in examples]
    assert summary["metrics"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score, abs=1e-9)
    assert summary["metrics"]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score, abs=1e-9)
    # summarization scores the same generations with ROUGE
    summarize = SummarizationTask(task.settings, task.tokenizer, task.family, extra=task.extra)
    features = summarize.encode_all(examples)
    with torch.no_grad():
        figures = summarize.evaluate(model, examples, features, batch_size=8)
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for key in ("rouge1", "rouge2", "rougeL"):
        want = sum(scorer.score(r, p)[key].fmeasure for r, p in zip(refs, preds)) / len(refs)
        assert figures[key] == pytest.approx(want, abs=1e-9)
    assert figures["val_loss"] == pytest.approx(summary["metrics"]["val_loss"], rel=1e-5)
    # the generation limit: examples spread over the set
    summarize.extra["eval_generate_limit"] = 5
    with torch.no_grad():
        limited = summarize.evaluate(model, examples, features, batch_size=8)
    assert limited["generated_examples"] == 5
    assert [s["source"] for s in limited["samples"]] == [examples[i]["source"] for i in (0, 4, 9, 14, 19)]


def _log_likelihood(model, task, example, ids, max_new):
    eos = task.tokenizer.eos_id
    full = ids + [eos] if len(ids) < max_new else ids
    src = torch.tensor([task.encode({"source": example["source"], "target": None})["input_ids"]])
    dec = torch.tensor([[model.backbone.config.decoder_start_token_id] + full[:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(model.backbone(src, decoder_input_ids=dec)[0].float(), -1)
    return float(logp[torch.arange(len(full)), torch.tensor(full)].sum())


def test_beam_search_is_at_least_as_likely_as_greedy(t5_run, copy_data):
    from lmforge.runs.rundir import load_task_run

    model, task = load_task_run(t5_run[0])
    examples = _valid(copy_data)[:12]
    greedy = task.with_decode(num_beams=1, max_new_tokens=8)
    beam = task.with_decode(num_beams=3, length_penalty=0.0, max_new_tokens=8)
    g_ids = greedy.generate_ids(model, examples, batch_size=5)
    b_ids = beam.generate_ids(model, examples, batch_size=5)
    for e, g, b in zip(examples, g_ids, b_ids):
        assert _log_likelihood(model, task, e, b, 8) >= _log_likelihood(model, task, e, g, 8) - 1e-4
    assert greedy.generate_texts(model, examples, batch_size=5) == [task.tokenizer.decode(g).strip() for g in g_ids]


def test_gpt_has_no_beam_search(gpt_run, copy_data):
    from lmforge.runs.rundir import load_task_run

    model, task = load_task_run(gpt_run[0])
    with pytest.raises(ConfigError):
        task.with_decode(num_beams=3).predict(model, _valid(copy_data)[:2], batch_size=2)


def test_api_predict_writes_outputs_in_order(t5_run, copy_data, tmp_path):
    from lmforge.api import predict
    from lmforge.runs.rundir import load_task_run

    examples = _valid(copy_data)
    # shuffled so that length-sorted batching inside would show if the order were lost
    examples = random.Random(3).sample(examples, len(examples))
    src = tmp_path / "input.txt"
    src.write_text("".join(e["source"] + "\n" for e in examples))
    out = tmp_path / "out.jsonl"
    assert predict(t5_run[0], str(src), output=str(out), batch_size=5) == len(examples)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    model, task = load_task_run(t5_run[0])
    with torch.no_grad():
        want = [task.predict(model, [e], batch_size=1)[0] for e in examples]
    assert lines == want
    assert all(set(line) == {"output"} for line in lines)


@pytest.mark.parametrize("which", ["t5_run", "gpt_run"])
def test_pipeline_returns_strings(which, request):
    from lmforge.api import pipeline

    run_dir, _ = request.getfixturevalue(which)
    translate = pipeline("translation", model=run_dir)
    one = translate("red cat dog")
    many = translate(["red cat dog", "fish fish blue"])
    assert isinstance(one, str) and isinstance(many, list) and all(isinstance(s, str) for s in many)
    assert many[0] == one
    with pytest.raises(ConfigError):
        pipeline("summarization", model=run_dir)


# ---------------------------------------------------------------- real data
DATA_DIR = os.environ.get("LMFORGE_DATA_DIR")


@pytest.mark.skipif(not DATA_DIR, reason="LMFORGE_DATA_DIR is not set (it holds multi30k/)")
def test_multi30k_smoke(tmp_path):
    from lmforge.runs.finetune import finetune

    root = Path(DATA_DIR) / "multi30k"
    if not (root / "train.en").is_file():
        pytest.skip(f"{root} has no train.en")
    data = TaskDataConfig(train="multi30k/train.en", train_target="multi30k/train.de", valid="multi30k/val.en",
                          valid_target="multi30k/val.de", format="parallel", max_train_examples=200,
                          max_valid_examples=8, max_length=48, max_target_length=48, target_lang="de")
    task = TranslationTask(TaskSettings(data=data), None, "gpt")
    read = task.read(str(root / "train.en"), target_path=str(root / "train.de"))
    en, de = (root / "train.en").read_text().split("\n"), (root / "train.de").read_text().split("\n")
    assert len(read) == 29000 and read[0] == {"source": en[0], "target": de[0]}
    assert read[-1] == {"source": en[28999], "target": de[28999]}
    out = tmp_path / "run"
    summary = finetune("translate", data=data, model=StartConfig(init="t5-debug", vocab_size=1000), out=out,
                       train=TrainConfig(max_steps=20, batch_size=8, eval_interval=10, progress=False,
                                         log_interval=10, checkpoint_interval=20),
                       decode=DecodeConfig(max_new_tokens=16))
    for name in ("config.yaml", "tokenizer.json", "config.json", "model.safetensors", "metrics.jsonl",
                 "summary.json"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["main_metric"] == "bleu" and on_disk["train_examples"] == 200 and on_disk["valid_examples"] == 8
    m = on_disk["metrics"]
    assert m["generated_examples"] == 8 and math.isfinite(m["val_loss"]) and 0 <= m["bleu"] <= 100
    assert m["bleu_signature"].startswith("nrefs:1") and "tok:13a" in m["bleu_signature"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 0 and steps[-1] == 20 and summary["steps"] == 20


def test_back_translation_augmentation_paraphrases_through_two_translate_runs(gpt_run):
    # The copy model stands in for both directions: the round trip must be exactly what the two
    # translation pipelines give when called directly.
    from lmforge.api import pipeline
    from lmforge.config import AugmentConfig
    from lmforge.data.augment import augment_texts
    from lmforge.runs.predict import back_translator

    run_dir = str(gpt_run[0])
    texts = [s for s, _ in _copy_pairs(4, 7)]
    examples = [{"text": t, "label": str(i % 2)} for i, t in enumerate(texts)]
    cfg = AugmentConfig(copies=1, back_translation=run_dir, back_translation_return=run_dir)
    out = augment_texts(examples, cfg, back_translator(cfg))
    there = pipeline("translation", model=run_dir)
    expected = there(there(texts))
    assert out[:4] == examples
    assert [e["text"] for e in out[4:]] == expected
    assert [e["label"] for e in out[4:]] == [e["label"] for e in examples]


def test_decoder_input_dropout_replaces_target_inputs_by_unk_in_training_only():
    from dataclasses import replace

    from lmforge.config import MethodConfig

    tok = train_tokenizer("unigram", TEXTS + [" ".join(WORDS)] * 5, 200)
    assert tok.unk_id is not None
    settings = TaskSettings(data=TaskDataConfig(train="-"), method=MethodConfig(decoder_input_dropout=0.5))
    task = TranslationTask(settings, tok, "t5", extra={"block_size": 64})
    model = _tiny_model(tok, "t5")
    rng = random.Random(0)
    examples = [{"source": " ".join(rng.choices(WORDS, k=6)), "target": " ".join(rng.choices(WORDS, k=rng.randint(2, 9)))}
                for _ in range(32)]
    batch = task.collate([task.encode(e) for e in examples])
    seen = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["decoder_input_ids"]), with_kwargs=True)
    torch.manual_seed(0)
    with torch.no_grad():
        task(model, batch)  # eval mode: the inputs as collated
        model.train()
        task(model, batch)
    given, trained = batch["decoder_input_ids"], seen[1]
    assert torch.equal(seen[0], given)
    changed = trained != given
    assert torch.all(trained[changed] == tok.unk_id)
    assert not changed[:, 0].any()  # the start token stays
    assert not changed[batch["labels"] == -100].any()  # and so does padding
    eligible = (batch["labels"] != -100).clone()
    eligible[:, 0] = False
    share = float(changed.sum()) / float(eligible.sum())
    assert 0.4 < share < 0.6, share
    with pytest.raises(ConfigError, match="decoder_input_dropout must be in"):
        MethodConfig(decoder_input_dropout=1.0)
    # A byte-level vocabulary has no unknown token: the padding token stands in.
    bpe = TranslationTask(replace(settings), train_tokenizer("bpe", TEXTS, 300), "t5", extra={"block_size": 64})
    assert bpe.tokenizer.unk_id is None
    seen.clear()
    bpe_model = _tiny_model(bpe.tokenizer, "t5").train()
    bpe_model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["decoder_input_ids"]),
                                        with_kwargs=True)
    bpe_batch = bpe.collate([bpe.encode(e) for e in examples])
    bpe(bpe_model, bpe_batch)
    changed = seen[0] != bpe_batch["decoder_input_ids"]
    assert changed.any() and torch.all(seen[0][changed] == bpe.tokenizer.pad_id)

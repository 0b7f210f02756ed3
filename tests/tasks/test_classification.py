"""Fine-tuning for classification: learning, methods (full/frozen/LoRA/frozen layers), resume, predict,
pipeline, imbalance and augmentation, bad input."""
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmforge.api as lf
from lmforge.cli import main
from lmforge.config import (AugmentConfig, BalanceConfig, MethodConfig, StartConfig, TaskDataConfig, TrainConfig)
from lmforge.data.tokenizers import train_tokenizer
from lmforge.errors import LmforgeError
from lmforge.models.registry import build_model, load_model, preset_config, save_model

POS = "good great fine nice lovely superb wonderful happy".split()
NEG = "bad awful poor nasty dreadful horrible terrible sad".split()
FILLER = "the movie plot was and a of it this film actors".split()


def _lines(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        label = i % 2
        words = [FILLER[int(j)] for j in torch.randint(0, len(FILLER), (5,), generator=g)]
        cue = (POS if label else NEG)[int(torch.randint(0, 8, (1,), generator=g))]
        words.insert(int(torch.randint(0, 5, (1,), generator=g)), cue)
        out.append(f"{label} {' '.join(words)}")
    return out


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentiment")
    (root / "train.txt").write_text("\n".join(_lines(240, 0)) + "\n")
    (root / "dev.txt").write_text("\n".join(_lines(40, 1)) + "\n")
    return root


def _train(**kw) -> TrainConfig:
    base = dict(batch_size=16, max_steps=40, lr=2e-3, warmup_steps=4, eval_interval=20, checkpoint_interval=20,
                log_interval=10, progress=False, weight_decay=0.0)
    return TrainConfig(**{**base, **kw})


def _data(root: Path, **kw) -> TaskDataConfig:
    return TaskDataConfig(train=str(root / "train.txt"), valid=str(root / "dev.txt"), format="label_text",
                          max_length=16, **kw)


def _small_start(preset: str = "bert-debug") -> StartConfig:
    return StartConfig(init=preset, vocab_size=300, n_layer=2, n_embd=64, n_head=4, block_size=32,
                       classifier_dropout=0.0)


@pytest.mark.parametrize("preset", ["bert-debug", "debug"])
def test_fresh_model_learns_the_cue_words_and_writes_a_complete_run(sentiment, tmp_path, preset):
    run = tmp_path / "run"
    summary = lf.finetune("classify", data=_data(sentiment), model=_small_start(preset), out=run, train=_train())
    assert summary["accuracy"] >= 0.9, summary["metrics"]
    metrics = summary["metrics"]
    assert set(metrics) >= {"accuracy", "macro_f1", "micro_f1", "confusion_matrix", "val_loss"}
    for name in ("config.yaml", "tokenizer.json", "model.safetensors", "config.json", "summary.json",
                 "metrics.jsonl", "plots/loss.png", "plots/confusion_matrix.png", "state/state.json"):
        assert (run / name).is_file(), name
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["accuracy"] == summary["accuracy"] and on_disk["task"] == "classify"
    # The numbers in summary.json are the library's: recompute from predictions on the dev file.
    out = tmp_path / "pred.jsonl"
    assert lf.predict(run, str(sentiment / "dev.txt"), output=str(out)) == 40
    preds = [json.loads(line)["label"] for line in out.read_text().splitlines()]
    gold = [line.split(" ", 1)[0] for line in (sentiment / "dev.txt").read_text().splitlines()]
    assert sum(p == g for p, g in zip(preds, gold)) / len(gold) == pytest.approx(summary["accuracy"])


def test_mean_pooling_is_the_head_over_the_masked_mean_of_the_hidden_states_and_carries_on(sentiment, tmp_path):
    from dataclasses import replace

    start = replace(_small_start(), pooling="mean")
    summary = lf.finetune("classify", data=_data(sentiment), model=start, out=tmp_path / "run", train=_train())
    assert summary["accuracy"] >= 0.9, summary["metrics"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pooling"] == "mean"
    net = load_model(tmp_path / "run").eval()
    assert net.pooling == "mean"
    ids = torch.tensor([[2, 17, 30, 41, 3, 0, 0], [2, 9, 3, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        hidden = net.backbone.features(ids, mask)
        by_hand = torch.stack([hidden[b, : int(mask[b].sum())].mean(0) for b in range(2)])
        torch.testing.assert_close(net(ids, attention_mask=mask), net.head(by_hand), rtol=1e-5, atol=1e-6)
    # More fine-tuning from the run keeps the pooling its head was trained on.
    more = lf.finetune("classify", data=_data(sentiment), model=StartConfig(init=str(tmp_path / "run")),
                       out=tmp_path / "more", train=_train(max_steps=2))
    assert "head kept" in more["start"] and load_model(tmp_path / "more").pooling == "mean"
    with pytest.raises(LmforgeError, match="model.pooling must be pooler, mean or last"):
        StartConfig(pooling="max")
    with pytest.raises(LmforgeError, match="has no pooler layer"):
        lf.finetune("classify", data=_data(sentiment), model=replace(_small_start("debug"), pooling="pooler"),
                    out=tmp_path / "gpt", train=_train(max_steps=1))


def _saved_start(tmp_path: Path, texts: list[str]) -> Path:
    """A 'pretrained' run directory: a BERT with its tokenizer, as pretraining would leave it."""
    tok = train_tokenizer("wordpiece", texts, 200)
    torch.manual_seed(0)
    model = build_model(preset_config("bert-debug", vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_embd=64))
    start = tmp_path / "start"
    start.mkdir()
    save_model(model, start)
    tok.save(start / "tokenizer.json")
    return start


def _texts(root: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in (root / "train.txt").read_text().splitlines()]


def _base_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def test_lora_trains_adapters_and_head_only_and_saves_them_separately(sentiment, tmp_path):
    # A base that already knows the domain (an earlier fine-tuning run), as a pretrained model would.
    base = tmp_path / "base"
    lf.finetune("classify", data=_data(sentiment), model=_small_start(), out=base, train=_train())
    before = {k: v for k, v in _base_weights(base).items() if k.startswith("backbone.")}
    run = tmp_path / "lora"
    summary = lf.finetune("classify", data=_data(sentiment), model=StartConfig(init=str(base)), out=run,
                          method=MethodConfig(method="lora", lora_r=4, lora_alpha=8.0, lora_dropout=0.0),
                          train=_train(lr=1e-2, max_steps=30))
    assert summary["trainable_parameters"] < summary["total_parameters"] / 3
    assert summary["accuracy"] >= 0.9, summary["metrics"]
    after = _base_weights(run)
    for key, value in before.items():  # every base weight is exactly where it started (the pooler feeds the
        if not key.startswith("backbone.pooler."):  # new head and trains with it)
            torch.testing.assert_close(after[key], value, rtol=0, atol=0)
    adapter = load_file(str(run / "adapter.safetensors"))
    assert adapter and all("lora_" in k or k.startswith(("head.", "backbone.pooler.")) for k in adapter)
    assert any("lora_" in k for k in adapter) and "head.weight" in adapter
    assert json.loads((run / "adapter.json").read_text())["lora"]["r"] == 4
    # Merged for prediction: the loaded model predicts what the unmerged one would.
    from lmforge.runs.rundir import load_task_run

    merged, task = load_task_run(run)
    raw = load_model(run)
    raw.eval()
    batch = task.collate([task.encode({"text": "the film was superb", "label": None})])
    with torch.no_grad():
        torch.testing.assert_close(merged(batch["input_ids"], attention_mask=batch["attention_mask"],
                                          token_type_ids=batch["token_type_ids"]),
                                   raw(batch["input_ids"], attention_mask=batch["attention_mask"],
                                       token_type_ids=batch["token_type_ids"]), rtol=1e-4, atol=1e-5)


def test_frozen_backbone_and_frozen_layers_keep_those_weights(sentiment, tmp_path):
    start = _saved_start(tmp_path, _texts(sentiment))
    before = _base_weights(start)
    run = tmp_path / "frozen"
    lf.finetune("classify", data=_data(sentiment), model=StartConfig(init=str(start)), out=run,
                method=MethodConfig(method="frozen"), train=_train(max_steps=10))
    after = _base_weights(run)
    assert all(torch.equal(after[f"backbone.{k}"], v) for k, v in before.items() if not k.startswith("pooler."))
    assert not torch.equal(after["backbone.pooler.weight"], before["pooler.weight"])  # trains with the head
    run = tmp_path / "layer0"
    lf.finetune("classify", data=_data(sentiment), model=StartConfig(init=str(start)), out=run,
                method=MethodConfig(method="full", freeze_layers=1, freeze_embeddings=True),
                train=_train(max_steps=10))
    after = _base_weights(run)
    frozen = [k for k in before if k.startswith("blocks.0.") or k.startswith("embeddings.w")]
    moved = [k for k in before if k.startswith("blocks.1.") and k.endswith("weight")]
    assert frozen and all(torch.equal(after[f"backbone.{k}"], before[k]) for k in frozen)
    assert moved and all(not torch.equal(after[f"backbone.{k}"], before[k]) for k in moved)


def test_discriminative_learning_rates_scale_lower_blocks(sentiment, tmp_path):
    from lmforge.models.heads import TaskModel, TaskModelConfig
    from lmforge.train.optim import build_optimizer

    backbone = build_model(preset_config("bert-debug", n_layer=2))
    net = TaskModel(TaskModelConfig(backbone=backbone.config.to_dict(), labels=["0", "1"],
                                    extra={"layer_lr_decay": 0.5, "head_lr_scale": 3.0}), backbone=backbone)
    opt = build_optimizer(net, _train())
    scale_of = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    named = dict(net.named_parameters())
    assert scale_of[id(named["head.weight"])] == 3.0
    assert scale_of[id(named["backbone.blocks.1.attn.qkv.weight"])] == 1.0
    assert scale_of[id(named["backbone.blocks.0.attn.qkv.weight"])] == 0.5
    assert scale_of[id(named["backbone.embeddings.wte.weight"])] == 0.25
    from lmforge.train.optim import set_lr

    set_lr(opt, 0.1)
    assert {round(g["lr"], 6) for g in opt.param_groups} == {0.3, 0.1, 0.05, 0.025}


def test_resumed_finetune_ends_with_the_uninterrupted_weights(sentiment, tmp_path):
    # A constant schedule so that a run stopped at step 10 trains exactly the first half of a 20-step one.
    data, start = _data(sentiment), _small_start()
    steps = dict(checkpoint_interval=10, eval_interval=10, schedule="constant")
    full = tmp_path / "full"
    lf.finetune("classify", data=data, model=start, out=full, train=_train(max_steps=20, **steps))
    cut = tmp_path / "cut"
    lf.finetune("classify", data=data, model=start, out=cut, train=_train(max_steps=10, **steps))
    lf.finetune("classify", data=data, model=start, out=cut, resume=True, train=_train(max_steps=20, **steps))
    a, b = _base_weights(full), _base_weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((cut / "summary.json").read_text())["steps"] == 20


def test_imbalance_controls_and_augmentation(sentiment, tmp_path):
    from lmforge.tasks.base import TaskSettings
    from lmforge.tasks.classification import ClassificationTask

    examples = [{"text": f"w{i} x", "label": "a"} for i in range(9)] + [{"text": "y z", "label": "b"}]
    over = ClassificationTask(TaskSettings(data=TaskDataConfig(train="-"), balance=BalanceConfig(sampling="over")),
                              None, "gpt")
    counts = {lab: sum(e["label"] == lab for e in over.resample(examples, 0)) for lab in "ab"}
    assert counts == {"a": 9, "b": 9}
    under = ClassificationTask(TaskSettings(data=TaskDataConfig(train="-"), balance=BalanceConfig(sampling="under")),
                               None, "gpt")
    counts = {lab: sum(e["label"] == lab for e in under.resample(examples, 0)) for lab in "ab"}
    assert counts == {"a": 1, "b": 1}
    weighted = ClassificationTask(TaskSettings(data=TaskDataConfig(train="-"),
                                               balance=BalanceConfig(class_weights=True)), None, "gpt", labels=["a", "b"])
    assert weighted.class_weights(examples) == pytest.approx([10 / (2 * 9), 10 / (2 * 1)])
    lexicon = tmp_path / "syn.txt"
    lexicon.write_text("good fine great\n")
    aug = ClassificationTask(TaskSettings(data=TaskDataConfig(train="-"), augment=AugmentConfig(
        copies=2, synonyms=str(lexicon), synonym_replace=1.0)), None, "gpt")
    out = aug.augment([{"text": "a good film", "label": "1"}])
    assert len(out) == 3 and out[0]["text"] == "a good film"
    assert all(e["label"] == "1" and e["text"].split()[1] in ("fine", "great") for e in out[1:])


def test_pipeline_and_cli_predict(sentiment, tmp_path, capsys):
    run = tmp_path / "run"
    lf.finetune("classify", data=_data(sentiment), model=_small_start(), out=run, train=_train())
    classify = lf.pipeline("sentiment-analysis", model=run)
    one = classify("the film was superb and wonderful")
    assert one["label"] == "1" and 0.5 < one["score"] <= 1.0
    assert [r["label"] for r in classify(["awful dreadful plot", "lovely happy film"])] == ["0", "1"]
    with pytest.raises(LmforgeError, match="classify"):
        lf.pipeline("ner", model=run)
    out = tmp_path / "cli.jsonl"
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--model", str(run), "--input", str(sentiment / "dev.txt"), "--output", str(out)])
    assert exit_.value.code in (0, None)
    assert len(out.read_text().splitlines()) == 40
    # Unlabelled lines: no first word may be taken for a label and dropped.
    plain = ["awful dreadful plot", "lovely happy film", "superb"]
    (tmp_path / "plain.txt").write_text("\n".join(plain) + "\n")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(run), "--input", str(tmp_path / "plain.txt"), "--output", str(out)])
    assert "read as one unlabelled text" in capsys.readouterr().err
    assert [json.loads(line) for line in out.read_text().splitlines()] == classify(plain)
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(run), "--input", str(tmp_path / "plain.txt"), "--output", str(out),
              "--format", "text"])
    assert [json.loads(line) for line in out.read_text().splitlines()] == classify(plain)


def test_finetune_cli_with_overrides(sentiment, tmp_path):
    run = tmp_path / "cli-run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: classify\ndata:\n  train: {sentiment / 'train.txt'}\n  valid: {sentiment / 'dev.txt'}\n"
                      "  format: label_text\nmodel:\n  init: bert-debug\n  vocab_size: 200\n  n_layer: 1\n"
                      "  block_size: 32\ntrain:\n  max_steps: 5\n  progress: false\n")
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", "--config", str(recipe), "--train.max-steps", "6", "--out", str(run)])
    assert exit_.value.code in (0, None)
    assert json.loads((run / "summary.json").read_text())["steps"] == 6


@pytest.mark.parametrize("args, message", [
    (["--data.train", "/nonexistent/train.txt"], "does not exist"),
    (["--data.train", "nowhere/train.txt"], "not found"),
    (["--model.init", "bert-tiny-typo"], "unknown model preset"),
    (["--task", "sentiment"], "unknown task"),
    (["--train.lr", "-1"], "train.lr"),
    (["--method.method", "prefix"], "method.method"),
    (["--method.label_smoothing", "1.5"], "method.label_smoothing"),
    (["--model.overrides", "{no_such_field: 1}"], "no_such_field"),
    (["--model.extend_vocab", "-1"], "model.extend_vocab"),
    (["--model.dropout", "1.5"], "model.dropout"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_no_run(sentiment, tmp_path, capsys, args, message):
    run = tmp_path / "bad"
    base = ["finetune", "--task", "classify", "--data.train", str(sentiment / "train.txt"), "--data.format",
            "label_text", "--model.init", "bert-debug", "--train.max_steps", "2", "--out", str(run)]
    with pytest.raises(SystemExit) as exit_:
        main(base + args)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error:") and "\n" not in err and message in err, err
    assert not run.exists()


def test_wrong_schema_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tscore\nhello\t1\n")
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", "--task", "classify", "--data.train", str(bad), "--data.format", "tsv",
              "--data.label_field", "label", "--model.init", "bert-debug", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "bad.tsv" in err and "label" in err
    assert not (tmp_path / "r").exists()


needs_data = pytest.mark.skipif(not os.environ.get("LMFORGE_DATA_DIR"),
                                reason="set LMFORGE_DATA_DIR to the shared datasets folder")


@needs_data
def test_sst2_recipe_smoke_on_real_data(tmp_path):
    run = tmp_path / "sst2"
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", "--config", str(Path(__file__).resolve().parents[2] / "configs/finetune/sst2.yaml"), "--model.init", "bert-debug",
              "--model.vocab_size", "2000", "--data.max_train_examples", "300", "--data.max_valid_examples", "100",
              "--train.max_steps", "8", "--train.eval_interval", "8", "--train.progress", "false",
              "--out", str(run)])
    assert exit_.value.code in (0, None)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["valid_examples"] == 100 and summary["metrics"]["labels"] == ["0", "1"]


def test_extra_training_files_join_after_the_validation_carve(sentiment, tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text("\n".join(_lines(30, 7)) + "\n")
    data = TaskDataConfig(train=str(sentiment / "train.txt"), extra_train=[str(extra)], format="label_text",
                          val_fraction=0.25, max_length=16)
    summary = lf.finetune("classify", data=data, model=_small_start(), out=tmp_path / "run", train=_train(max_steps=2))
    # 240 lines, the last quarter carved for validation; the extra file only ever trains.
    assert summary["valid_examples"] == 60 and summary["train_examples"] == 180 + 30


def test_extra_training_files_refuse_parallel_text(sentiment, tmp_path, capsys):
    args = ["finetune", "--task", "translate", "--data.train", str(sentiment / "train.txt"), "--data.train_target",
            str(sentiment / "train.txt"), "--data.extra_train", f"[{sentiment / 'dev.txt'}]", "--out",
            str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.extra_train" in err[0], err
    assert not (tmp_path / "run").exists()


ZH_POS, ZH_NEG = "好棒赞喜乐美", "差烂糟坏苦丑"


@pytest.fixture(scope="module")
def zh_sentiment(tmp_path_factory):
    """English filler around one Chinese cue character per line, and an English-only "pretrained" BERT."""
    g = torch.Generator().manual_seed(0)

    def lines(n):
        out = []
        for i in range(n):
            words = [FILLER[int(j)] for j in torch.randint(0, len(FILLER), (4,), generator=g)]
            words.insert(2, (ZH_POS if i % 2 else ZH_NEG)[int(torch.randint(0, 6, (1,), generator=g))])
            out.append(f"{i % 2} {' '.join(words)}")
        return out

    root = tmp_path_factory.mktemp("zh_sentiment")
    (root / "train.txt").write_text("\n".join(lines(240)) + "\n", encoding="utf-8")
    (root / "dev.txt").write_text("\n".join(lines(40)) + "\n", encoding="utf-8")
    return root, _saved_start(root, [" ".join(FILLER)] * 20)


def test_extend_vocab_lets_an_english_model_read_new_characters(zh_sentiment, tmp_path):
    # Without new tokens every cue is [UNK] to the English vocabulary and the label cannot be learned.
    root, start = zh_sentiment
    train = _train(max_steps=60, lr=3e-3)
    plain = lf.finetune("classify", data=_data(root), model=StartConfig(init=str(start)), out=tmp_path / "plain",
                        train=train)
    extended = lf.finetune("classify", data=_data(root), model=StartConfig(init=str(start), extend_vocab=1),
                           out=tmp_path / "extended", train=train)
    assert plain["accuracy"] <= 0.7 and extended["accuracy"] >= 0.9, (plain["accuracy"], extended["accuracy"])
    assert "characters added to its vocabulary" in extended["start"]
    from lmforge.data.tokenizers import Tokenizer

    grown = Tokenizer.load(tmp_path / "extended")
    assert all(grown.encode(ch) != [grown.token_to_id("[UNK]")] for ch in ZH_POS + ZH_NEG)
    # The run keeps the grown tokenizer and model, so prediction reads the new characters too.
    classify = lf.pipeline("sentiment-analysis", model=tmp_path / "extended")
    assert [r["label"] for r in classify(["the movie 好 was", "the film 糟 it"])] == ["1", "0"]
    with pytest.raises(LmforgeError, match="extend_vocab"):
        StartConfig(init=str(start), extend_vocab=-1)
    with pytest.raises(LmforgeError, match="model.dropout"):  # a pretrained start's rate is checked too
        lf.finetune("classify", data=_data(root), model=StartConfig(init=str(start), dropout=1.5),
                    out=tmp_path / "bad", train=train)
    assert not (tmp_path / "bad").exists()


def test_resumed_run_with_an_extended_vocabulary_ends_with_the_uninterrupted_weights(zh_sentiment, tmp_path):
    # Resuming builds the starting model again: the same characters must get the same ids and rows.
    root, start = zh_sentiment
    model = StartConfig(init=str(start), extend_vocab=1, dropout=0.0)
    steps = dict(checkpoint_interval=10, eval_interval=10, schedule="constant")
    lf.finetune("classify", data=_data(root), model=model, out=tmp_path / "full", train=_train(max_steps=20, **steps))
    cut = tmp_path / "cut"
    lf.finetune("classify", data=_data(root), model=model, out=cut, train=_train(max_steps=10, **steps))
    lf.finetune("classify", data=_data(root), model=model, out=cut, resume=True, train=_train(max_steps=20, **steps))
    a, b = _base_weights(tmp_path / "full"), _base_weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_model(cut).backbone.config.dropout == 0.0


def test_finetune_says_what_it_will_do_and_warns_about_labels_never_predicted(sentiment, tmp_path, capsys):
    from lmforge.runs.finetune import unlearned_labels

    lf.finetune("classify", data=_data(sentiment), model=_small_start(), out=tmp_path / "run",
                train=_train(max_steps=2, progress=True))
    out = capsys.readouterr().out
    assert "finetune classify: fresh bert-debug" in out
    assert "240 train / 40 validation" in out and "labels: 2 (0, 1)" in out and "2 steps of 16" in out
    figures = {"per_label": {"0": {"f1": 0.8, "support": 5}, "1": {"f1": 0.0, "support": 3},
                             "2": {"f1": 0.0, "support": 0}}}
    assert unlearned_labels(figures) == ["1"]  # a label absent from validation is not a failure
    assert unlearned_labels({"per_type": {"PER": {"f1": 0.0, "support": 2}}}) == ["PER"]

"""`lmforge quantize`: the run it writes loads through the one loader and works with generate, eval perplexity,
predict and pipeline; its mistakes are one-line errors that leave no output behind."""
import json

import pytest
import torch

import lmforge.api as lf
from lmforge.cli import main
from lmforge.compress import Int4Linear, Int8Linear
from lmforge.config import StartConfig, TaskDataConfig, TrainConfig
from lmforge.errors import ConfigError
from lmforge.runs.rundir import load, load_task_run

from cli_run import assert_user_error, lmforge  # tests/cli_run.py

TEXT = ("the quick brown fox jumps over the lazy dog. a stitch in time saves nine. " * 60)


def _train(steps: int, batch_size: int = 8, lr: float = 3e-3) -> TrainConfig:
    return TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, warmup_steps=4, eval_interval=steps,
                       checkpoint_interval=steps, log_interval=steps, progress=False, weight_decay=0.0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A small pretrained GPT run and its int8 copy, made through the command line."""
    root = tmp_path_factory.mktemp("quantize")
    (root / "corpus.txt").write_text(TEXT)
    lf.prepare(str(root / "corpus.txt"), root / "data", tokenizer="char", progress=False)
    lf.pretrain(str(root / "data"), "debug", out=root / "run", train=_train(40))
    result = lmforge("quantize", root / "run", "--method", "int8", "--out", root / "run_q")
    assert result.returncode == 0, result.stderr
    assert "quantized 9 linear layers to int8" in result.stdout
    (root / "empty.txt").write_text("  \n")
    return root


def test_the_quantized_run_is_a_complete_run_describing_its_quantization(runs):
    run_q = runs / "run_q"
    assert sorted(p.name for p in run_q.iterdir()) == ["config.json", "config.yaml", "model.safetensors",
                                                       "summary.json", "tokenizer.json"]
    assert (run_q / "tokenizer.json").read_bytes() == (runs / "run" / "tokenizer.json").read_bytes()
    config = json.loads((run_q / "config.json").read_text())
    assert config["quantization"]["method"] == "int8" and len(config["quantization"]["modules"]) == 9
    summary = json.loads((run_q / "summary.json").read_text())
    assert summary["weight_bytes_after"] < summary["weight_bytes_before"]
    assert not [p for p in runs.iterdir() if p.name.startswith(".run_q")]  # no temp folder left


def test_the_loader_rebuilds_int8_layers_that_predict_like_fp32(runs):
    model, tokenizer = load(runs / "run_q")
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.blocks[0].mlp.up, Int8Linear)
    exact_model, _ = load(runs / "run")
    ids = torch.tensor([tokenizer.encode(TEXT[:120])])
    with torch.no_grad():
        ours, exact = model(ids).argmax(-1), exact_model(ids).argmax(-1)
    assert (ours == exact).float().mean() >= 0.95


def test_generate_and_eval_perplexity_work_from_the_command_line(runs):
    result = lmforge("generate", "--model", runs / "run_q", "--prompt", "the quick", "--max_new_tokens", "12",
                     "--temperature", "0", "--no_stream")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("the quick") and len(result.stdout.strip()) > len("the quick")
    result = lmforge("eval", "perplexity", "--model", runs / "run_q", "--data", runs / "data")
    assert result.returncode == 0, result.stderr
    quantized = json.loads(result.stdout.strip().splitlines()[-1])
    exact = lf.evaluate_perplexity(runs / "run", str(runs / "data"))
    assert quantized["perplexity"] == pytest.approx(exact["perplexity"], rel=0.01)


def test_a_quantized_run_cannot_be_trained_further(runs, tmp_path):
    with pytest.raises(ConfigError, match="is quantized"):
        lf.pretrain(str(runs / "data"), "debug", out=tmp_path / "more", train=_train(2),
                    init_from=str(runs / "run_q"))


def test_a_quantized_run_is_not_exported_to_hugging_face(runs, tmp_path):
    assert_user_error(lmforge("convert", runs / "run_q", tmp_path / "hf", "--to", "hf"), "is quantized (int8)",
                      "convert the run it was quantized from")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("args, message", [
    (["{run_q}", "--out", "{tmp}/again"], "already quantized"),
    (["{root}/nowhere", "--out", "{tmp}/again"], "is not a run directory"),
    (["{run}", "--out", "{tmp}/taken"], "already exists"),
    (["{run}", "--out", "{tmp}/again", "--method", "int3"], "invalid choice"),
    (["{run}", "--out", "{tmp}/again", "--method", "int4", "--group_size", "48"], "--group_size 48 is not supported"),
    (["{run}", "--out", "{tmp}/again", "--method", "int4"], "pass --group_size 32 or 64"),  # widths 64, 256
    (["{run}", "--out", "{tmp}/again", "--method", "int4", "--calibration", "{root}/empty.txt"], "is empty"),
    (["{run}", "--out", "{tmp}/again", "--method", "int4", "--calibration", "{root}/none.txt"], "is not a file"),
    (["{run}", "--out", "{tmp}/again", "--group_size", "64"], "do not apply to --method int8"),
])
def test_mistakes_are_one_line_errors_that_leave_no_output(runs, tmp_path, capsys, args, message):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    names = {"run_q": runs / "run_q", "run": runs / "run", "root": runs, "tmp": tmp_path}
    with pytest.raises(SystemExit) as exit_:
        main(["quantize", *(a.format(**names) for a in args)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error:") and "\n" not in err and message in err, err
    assert not (tmp_path / "again").exists() and (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_overwrite_replaces_an_existing_output(runs, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    result = lmforge("quantize", runs / "run", "--out", tmp_path / "out", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "out" / "old.txt").exists() and (tmp_path / "out" / "model.safetensors").is_file()
    assert_user_error(lmforge("quantize", tmp_path / "out", "--out", tmp_path / "twice"), "already quantized")


def test_a_calibrated_int4_run_generates_and_scores_from_the_command_line(runs, tmp_path):
    result = lmforge("quantize", runs / "run", "--method", "int4", "--group_size", "32", "--calibration",
                     runs / "corpus.txt", "--out", tmp_path / "run_q4")
    assert result.returncode == 0, result.stderr
    assert "quantized 9 linear layers to int4" in result.stdout
    record = json.loads((tmp_path / "run_q4" / "config.json").read_text())["quantization"]
    assert (record["method"], record["group_size"], record["calibrated"]) == ("int4", 32, True)
    model, _ = load(tmp_path / "run_q4")
    assert isinstance(model.lm_head, Int4Linear) and model.lm_head.input_scales is not None
    result = lmforge("generate", "--model", tmp_path / "run_q4", "--prompt", "the quick", "--max_new_tokens", "12",
                     "--temperature", "0", "--no_stream")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("the quick") and len(result.stdout.strip()) > len("the quick")
    quantized = lf.evaluate_perplexity(tmp_path / "run_q4", str(runs / "data"))
    exact = lf.evaluate_perplexity(runs / "run", str(runs / "data"))
    assert quantized["perplexity"] == pytest.approx(exact["perplexity"], rel=0.1)
    assert_user_error(lmforge("quantize", tmp_path / "run_q4", "--out", tmp_path / "twice", "--method", "int4",
                              "--group_size", "32"), "already quantized (int4)")
    assert not (tmp_path / "twice").exists()


POS, NEG = "good great fine nice lovely".split(), "bad awful poor nasty dreadful".split()


def test_a_fine_tuned_encoder_classifier_quantizes_and_predicts_like_the_original(tmp_path):
    g = torch.Generator().manual_seed(0)
    lines = [f"{i % 2} the film was {(POS if i % 2 else NEG)[int(torch.randint(0, 5, (1,), generator=g))]} "
             f"and long" for i in range(240)]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    data = TaskDataConfig(train=str(tmp_path / "train.txt"), valid=str(tmp_path / "train.txt"), format="label_text",
                          max_length=16)
    start = StartConfig(init="bert-debug", vocab_size=200, n_layer=2, n_embd=64, n_head=4, block_size=32,
                        classifier_dropout=0.0)
    summary = lf.finetune("classify", data=data, model=start, out=tmp_path / "run", train=_train(50, 16, 2e-3))
    assert summary["accuracy"] >= 0.9  # a model that has learned, so that agreeing with it means something
    lf.quantize(tmp_path / "run", tmp_path / "run_q")
    net, _ = load_task_run(tmp_path / "run_q")
    assert isinstance(net.head, Int8Linear)
    for run in ("run", "run_q"):
        assert lf.predict(tmp_path / run, str(tmp_path / "train.txt"), output=str(tmp_path / f"{run}.jsonl")) == 240
    exact, ours = ([json.loads(line)["label"] for line in (tmp_path / f"{run}.jsonl").read_text().splitlines()]
                   for run in ("run", "run_q"))
    assert sum(a == b for a, b in zip(exact, ours)) >= 236
    classify = lf.pipeline("sentiment-analysis", tmp_path / "run_q")
    assert [classify(f"the film was {word} and long")["label"] for word in ("lovely", "awful")] == ["1", "0"]

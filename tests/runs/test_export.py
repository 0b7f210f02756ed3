"""`lmforge export RUN --format onnx --out DIR`: the folder it writes runs in onnxruntime like the run does in
lmforge (classifier logits, greedy decoding through the cache); its mistakes are one-line errors that leave no
output behind."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

import lmforge.api as lf
from lmforge.cli import main
from lmforge.config import StartConfig, TaskDataConfig, TrainConfig
from lmforge.runs.rundir import load, load_task_run

from cli_run import assert_user_error, lmforge  # tests/cli_run.py

TEXT = "the quick brown fox jumps over the lazy dog. a stitch in time saves nine. " * 40


def _train(steps: int, batch_size: int = 8) -> TrainConfig:
    return TrainConfig(max_steps=steps, batch_size=batch_size, lr=3e-3, warmup_steps=2, eval_interval=steps,
                       checkpoint_interval=steps, log_interval=steps, progress=False, weight_decay=0.0)


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A pretrained GPT run, a fine-tuned BERT classifier, an RNN run, an int8 copy of the GPT, and the GPT's and
    classifier's exports (the GPT's made through the command line)."""
    root = tmp_path_factory.mktemp("export")
    (root / "corpus.txt").write_text(TEXT)
    lf.prepare(str(root / "corpus.txt"), root / "data", tokenizer="char", progress=False)
    lf.pretrain(str(root / "data"), "debug", out=root / "gpt", train=_train(20))
    lf.pretrain(str(root / "data"), "rnn-debug", out=root / "rnn", train=_train(2))
    lf.quantize(root / "gpt", root / "gpt_q")
    lines = [f"{i % 2} the film was {('good', 'bad')[i % 2]} and {'long ' * (i % 5)}" for i in range(64)]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    data = TaskDataConfig(train=str(root / "train.txt"), valid=str(root / "train.txt"), format="label_text",
                          max_length=24)
    start = StartConfig(init="bert-debug", vocab_size=200, n_layer=2, n_embd=64, n_head=4, block_size=32,
                        classifier_dropout=0.0)
    lf.finetune("classify", data=data, model=start, out=root / "bert", train=_train(6, 16))
    result = lmforge("export", root / "gpt", "--format", "onnx", "--out", root / "gpt_onnx")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"exported decoder graph (ONNX opset 18) -> {root / 'gpt_onnx' / 'model.onnx'}"
    assert result.stderr.strip() == "", result.stderr
    lf.export(root / "bert", root / "bert_onnx")
    return root


def test_the_export_folder_holds_the_graph_the_run_files_and_a_description(runs):
    for name in ("gpt", "bert"):
        out = runs / f"{name}_onnx"
        assert sorted(p.name for p in out.iterdir()) == ["config.json", "config.yaml", "export.json", "model.onnx",
                                                         "tokenizer.json"]
        assert (out / "tokenizer.json").read_bytes() == (runs / name / "tokenizer.json").read_bytes()
        assert not [p for p in runs.iterdir() if p.name.startswith(f".{name}_onnx")]  # no temp folder left
    record = json.loads((runs / "bert_onnx" / "export.json").read_text())
    assert (record["kind"], record["opset"], record["labels"]) == ("classifier", 18, ["0", "1"])
    assert [i["name"] for i in record["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    record = json.loads((runs / "gpt_onnx" / "export.json").read_text())
    assert record["kind"] == "decoder" and record["cache"]["layers"] == 2 and len(record["inputs"]) == 3 + 4


def test_classifier_logits_match_the_run_at_two_batch_sizes_and_lengths(runs):
    model, task = load_task_run(runs / "bert")
    session = _session(runs / "bert_onnx" / "model.onnx")
    tokenizer = task.tokenizer
    for texts in (["the film was good and long"], ["the film was bad", "good", "the film was good and long long long"]):
        rows = [tokenizer.encode(t) for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        types = torch.zeros_like(ids)
        with torch.no_grad():
            expected = model(ids, mask, types).numpy()
        (got,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                    "token_type_ids": types.numpy()})
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_greedy_decoding_in_onnxruntime_matches_lmforge_generate(runs):
    model, tokenizer = load(runs / "gpt")
    cache = json.loads((runs / "gpt_onnx" / "export.json").read_text())["cache"]
    session = _session(runs / "gpt_onnx" / "model.onnx")
    prompt = tokenizer.encode("the quick")
    expected = tokenizer.encode(lf.generate(model, "the quick", tokenizer=tokenizer, temperature=0.0,
                                            max_new_tokens=16)[0][0])
    past = {f"past_{kind}_{i}": np.zeros((1, cache["kv_heads"], 0, cache["head_dim"]), np.float32)
            for i in range(cache["layers"]) for kind in ("key", "value")}
    ids, new = np.array([prompt], np.int64), []
    for step in range(16):
        length = next(iter(past.values())).shape[2]
        feed = {"input_ids": ids, "attention_mask": np.ones((1, length + ids.shape[1]), np.int64),
                "position_ids": np.arange(length, length + ids.shape[1], dtype=np.int64)[None], **past}
        logits, *present = session.run(None, feed)
        if step == 0:
            with torch.no_grad():
                reference = model(torch.tensor([prompt]))[0].numpy()
            np.testing.assert_allclose(logits[0], reference, atol=1e-4, rtol=0)
        new.append(int(logits[0, -1].argmax()))
        past, ids = dict(zip(past, present)), np.array([[new[-1]]], np.int64)
    assert new == expected


@pytest.mark.parametrize("args, message", [
    (["{root}/rnn", "--out", "{tmp}/again"], "rnn models cannot be exported to ONNX; supported: "),
    (["{root}/gpt_q", "--out", "{tmp}/again"], "is quantized (int8) and cannot be exported"),
    (["{root}/nowhere", "--out", "{tmp}/again"], "is not a run directory"),
    (["{root}/data", "--out", "{tmp}/again"], "is not a run directory"),
    (["{root}/gpt", "--out", "{tmp}/taken"], "already exists"),
    (["{root}/gpt", "--out", "{root}"], "would replace the run"),
    (["{root}/gpt", "--out", "{tmp}/again", "--format", "tflite"], "invalid choice"),
])
def test_mistakes_are_one_line_errors_that_leave_no_output(runs, tmp_path, capsys, args, message):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        main(["export", *(a.format(root=runs, tmp=tmp_path) for a in args)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error:") and "\n" not in err and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_an_unsupported_run_from_the_command_line_is_one_error_line(runs, tmp_path):
    assert_user_error(lmforge("export", runs / "rnn", "--out", tmp_path / "x"), "supported: sequence classifiers")
    assert not (tmp_path / "x").exists()


def test_overwrite_replaces_an_existing_output(runs, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    record = lf.export(runs / "bert", tmp_path / "out", overwrite=True)
    assert record["kind"] == "classifier"
    assert not (tmp_path / "out" / "old.txt").exists() and (tmp_path / "out" / "model.onnx").is_file()

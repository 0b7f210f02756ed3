"""`lmforge prune` and `lmforge distill` on a small fine-tuned classifier: a structurally pruned run loads as
the smaller model and predicts, recovery fine-tuning keeps the head and trains through the one trainer, a
pruned run fine-tunes and quantizes like any run; a student distilled from half the teacher's layers learns;
mistakes are one-line errors that leave no output."""
import json

import pytest
import torch

import lmforge.api as lf
from lmforge.cli import main
from lmforge.compress.prune import prunable_blocks
from lmforge.config import StartConfig, TaskDataConfig, TrainConfig
from lmforge.runs.rundir import load_task_run

from cli_run import lmforge  # tests/cli_run.py

POS, NEG = "good great fine nice lovely".split(), "bad awful poor nasty dreadful".split()


def _train(steps: int) -> TrainConfig:
    return TrainConfig(max_steps=steps, batch_size=16, lr=2e-3, warmup_steps=4, eval_interval=steps,
                       checkpoint_interval=steps, log_interval=steps, progress=False, weight_decay=0.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    g = torch.Generator().manual_seed(0)
    lines = [f"{i % 2} the film was {(POS if i % 2 else NEG)[int(torch.randint(0, 5, (1,), generator=g))]} "
             f"and long" for i in range(240)]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    data = TaskDataConfig(train=str(root / "train.txt"), valid=str(root / "train.txt"), format="label_text",
                          max_length=16)
    start = StartConfig(init="bert-debug", vocab_size=200, n_layer=2, n_embd=64, n_head=4, block_size=32,
                        intermediate_size=128, classifier_dropout=0.0)
    summary = lf.finetune("classify", data=data, model=start, out=root / "run", train=_train(50))
    assert summary["accuracy"] >= 0.9
    other = StartConfig(init="bert-debug", vocab_size=60, n_layer=1, n_embd=32, n_head=2,
                        block_size=32)
    lf.finetune("classify", data=data, model=other, out=root / "other", train=_train(2))
    return root


def _labels(path) -> list[str]:
    return [json.loads(line)["label"] for line in path.read_text().splitlines()]


def test_a_structurally_pruned_run_is_smaller_and_predicts(run, tmp_path):
    result = lmforge("prune", run / "run", "--sparsity", "0.5", "--importance", "taylor", "--out", tmp_path / "p")
    assert result.returncode == 0, result.stderr
    assert "pruned (structured)" in result.stdout
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["removed_fraction"]["block_parameters"] == pytest.approx(0.5, abs=0.02)
    net, _ = load_task_run(tmp_path / "p")
    assert [b.attn.n_head for b in prunable_blocks(net)] == [2, 2]
    assert [b.mlp.up.out_features for b in prunable_blocks(net)] == [64, 64]
    assert (tmp_path / "p" / "model.safetensors").stat().st_size < (run / "run" / "model.safetensors").stat().st_size
    assert lf.predict(tmp_path / "p", str(run / "train.txt"), output=str(tmp_path / "p.jsonl")) == 240
    assert lf.quantize(tmp_path / "p", tmp_path / "pq")["quantized_layers"] > 0


def test_recovery_keeps_the_head_and_trains_the_pruned_model(run, tmp_path):
    summary = lf.prune(run / "run", tmp_path / "r", sparsity=0.5, recover_steps=20)
    written = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert written["steps"] == 20 and written["pruning"]["recover_steps"] == 20
    assert "head kept" in written["start"]
    assert summary["recovered"]["value"] >= 0.9
    net, _ = load_task_run(tmp_path / "r")
    assert [b.attn.n_head for b in prunable_blocks(net)] == [2, 2]
    assert not list(tmp_path.glob(".*"))  # the staging folder is gone


def test_a_recovery_start_keeps_the_head_weights_it_starts_from(run, tmp_path):
    lf.prune(run / "run", tmp_path / "p", sparsity=0.25)
    data = TaskDataConfig(train=str(run / "train.txt"), valid=str(run / "train.txt"), format="label_text",
                          max_length=16)
    train = TrainConfig(max_steps=1, batch_size=4, lr=1e-12, warmup_steps=0, eval_interval=1,
                        checkpoint_interval=1, log_interval=1, progress=False, weight_decay=0.0)
    lf.finetune("classify", data=data, model=StartConfig(init=str(tmp_path / "p"), classifier_dropout=0.0),
                out=tmp_path / "c", train=train)
    before, _ = load_task_run(tmp_path / "p")
    after, _ = load_task_run(tmp_path / "c")
    torch.testing.assert_close(after.head.weight, before.head.weight, atol=1e-6, rtol=0)


@pytest.mark.parametrize("args, message", [
    (["{run}", "--out", "{tmp}/again", "--sparsity", "1.0"], "--sparsity must be between 0 and 1"),
    (["{run}", "--out", "{tmp}/again", "--sparsity", "0"], "--sparsity must be between 0 and 1"),
    (["{run}", "--out", "{tmp}/again", "--method", "random"], "invalid choice"),
    (["{run}", "--out", "{tmp}/taken"], "already exists"),
    (["{root}/nowhere", "--out", "{tmp}/again"], "is not a run directory"),
    (["{run}", "--out", "{tmp}/again", "--recover_steps", "-1"], "--recover_steps must be 0 or more"),
    (["{run}", "--out", "{tmp}/again", "--calibration", "{root}/train.txt"], "applies to --method lowrank"),
    (["{run}", "--out", "{tmp}/again", "--method", "lowrank", "--calibration", "{root}/train.txt"],
     "needs a language-model run"),
])
def test_mistakes_are_one_line_errors_that_leave_no_output(run, tmp_path, capsys, args, message):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    names = {"run": run / "run", "root": run, "tmp": tmp_path}
    with pytest.raises(SystemExit) as exit_:
        main(["prune", *(a.format(**names) for a in args)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error:") and "\n" not in err and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def _logits(run_dir, batch) -> torch.Tensor:
    net, _ = load_task_run(run_dir)
    with torch.no_grad():
        return net.eval()(batch["input_ids"], attention_mask=batch["attention_mask"])


def test_a_low_rank_run_is_factorised_whitening_beats_plain_svd_and_it_recovers(run, tmp_path):
    whitened = lf.prune(run / "run", tmp_path / "w", method="lowrank", sparsity=0.3)
    plain = lf.prune(run / "run", tmp_path / "p", method="lowrank", sparsity=0.3, whiten=False)
    assert whitened["removed_fraction"]["block_parameters"] == pytest.approx(0.3, abs=0.03)
    assert whitened["pruning"]["whitened"] and not plain["pruning"]["whitened"]
    _, task = load_task_run(run / "run")
    batch = task.collate(task.encode_all(task.read(str(run / "train.txt"))[:64]))
    original = _logits(run / "run", batch)
    error = {name: float((_logits(tmp_path / name, batch) - original).pow(2).mean()) for name in ("w", "p")}
    assert error["w"] < error["p"], error
    assert lf.predict(tmp_path / "w", str(run / "train.txt"), output=str(tmp_path / "w.jsonl")) == 240
    recovered = lf.prune(run / "run", tmp_path / "r", method="lowrank", sparsity=0.3, recover_steps=10)
    assert recovered["recovered"]["value"] is not None
    assert "low_rank" in json.loads((tmp_path / "r" / "config.json").read_text())
    with pytest.raises(SystemExit):
        main(["prune", str(tmp_path / "w"), "--out", str(tmp_path / "again")])


def test_a_student_from_half_the_teacher_learns_from_it(run, tmp_path):
    result = lmforge("distill", "--teacher", run / "run", "--student", "half", "--train.max_steps", "30",
                     "--train.batch_size", "16", "--train.lr", "2e-3", "--train.progress", "false",
                     "--distill.temperature", "2", "--distill.hidden_weight", "0.5", "--distill.attention_weight", "0.5",
                     "--out", tmp_path / "s")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    record = summary["distillation"]
    assert record["student_parameters"] < record["teacher_parameters"] and record["temperature"] == 2.0
    assert summary["accuracy"] >= 0.9 and "head kept" in summary["start"]
    logged = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert any("train_kd" in row and "train_cls" in row and "train_hidden" in row and "train_attention" in row
               for row in logged)  # all terms
    net, _ = load_task_run(tmp_path / "s")
    assert net.backbone.config.n_layer == 1
    assert lf.predict(tmp_path / "s", str(run / "train.txt"), output=str(tmp_path / "s.jsonl")) == 240


def test_a_narrower_student_learns_the_teachers_hidden_states_through_a_projection(run, tmp_path):
    import shutil

    from lmforge.models.registry import build_model, preset_config, save_model

    torch.manual_seed(0)
    narrow = build_model(preset_config("bert-debug", vocab_size=200, n_layer=1, n_embd=32, n_head=2, block_size=32,
                                       intermediate_size=64))
    save_model(narrow, tmp_path / "narrow")
    shutil.copyfile(run / "run" / "tokenizer.json", tmp_path / "narrow" / "tokenizer.json")
    summary = lf.distill(run / "run", tmp_path / "s", student=str(tmp_path / "narrow"),
                         distill=lf.DistillConfig(hidden_weight=1.0, attention_weight=0.5),
                         train=TrainConfig(max_steps=30, batch_size=16, lr=2e-3, warmup_steps=4, eval_interval=30,
                                           checkpoint_interval=30, log_interval=5, progress=False))
    logged = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    hidden = [row["train_hidden"] for row in logged if "train_hidden" in row]
    assert hidden and hidden[-1] < hidden[0]  # the projected states move towards the teacher's
    net, _ = load_task_run(tmp_path / "s")
    assert net.backbone.config.n_embd == 32  # the projection is not part of the student
    assert summary["accuracy"] is not None
    assert lf.predict(tmp_path / "s", str(run / "train.txt"), output=str(tmp_path / "s.jsonl")) == 240


@pytest.mark.parametrize("args, message", [
    (["--student", "{root}/other"], "have different tokenizers"),
    (["--student", "7"], "must name layers between 0 and 1"),
    (["--student", "nonsense"], "is not a run directory, a preset"),
    (["--distill.alpha", "2"], "distill.alpha must be in [0, 1]"),
    (["--distill.attention_weight", "-1"], "distill.attention_weight must be 0 or more"),
])
def test_distill_mistakes_are_one_line_errors_that_leave_no_output(run, tmp_path, capsys, args, message):
    names = {"root": run}
    with pytest.raises(SystemExit) as exit_:
        main(["distill", "--teacher", str(run / "run"), *(a.format(**names) for a in args),
              "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error:") and "\n" not in err and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_the_compress_report_puts_each_variant_beside_the_original(run, tmp_path):
    lf.prune(run / "run", tmp_path / "pruned", sparsity=0.5)
    lf.quantize(run / "run", tmp_path / "int8")
    result = lmforge("compress", "report", run / "run", tmp_path / "pruned", tmp_path / "int8", "--repeats", "3",
                     "--seq_len", "16", "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    original, pruned, int8 = report["rows"]
    assert original["speedup_batch1"] == 1.0 and "top1_agreement" not in original
    assert pruned["parameters"] < original["parameters"] and pruned["size_mb"] < original["size_mb"]
    # The MLM decoder shares the embedding matrix in the original; quantized, it is its own int8 matrix.
    backbone = json.loads((run / "run" / "config.json").read_text())["backbone"]
    tied_decoder = backbone["vocab_size"] * backbone["n_embd"]
    assert int8["parameters"] - original["parameters"] in (0, tied_decoder) and int8["size_ratio"] > 1.5
    assert int8["top1_agreement"] >= 0.95 and int8["kl"] < 0.05
    assert original["metric"] == "accuracy" and original["value"] >= 0.9
    exact = lf.predict(run / "run", str(run / "train.txt"), output=str(tmp_path / "exact.jsonl"))
    assert exact == 240
    assert (tmp_path / "report" / "report.png").stat().st_size > 1000
    assert "| pruned |" in (tmp_path / "report" / "report.md").read_text() and "| pruned |" in result.stdout

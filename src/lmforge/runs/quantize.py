"""`lmforge quantize RUN --method int8|int4 --out RUN_Q`: a quantized copy of a run, itself a run directory.

RUN_Q holds what loading and prediction read: config.yaml and tokenizer.json copied from RUN,
model.safetensors with the quantized weights, config.json with the model config plus its
"quantization" record, and a summary.json saying where it came from and how much smaller it is.
Training state, metrics and plots stay with RUN: RUN_Q was not trained. A fine-tuned run's LoRA
adapters are folded into its weights first. RUN_Q is written whole or not at all.
`--method int4 --calibration FILE` runs the float model over a few windows of FILE (tokenized with the
run's tokenizer) to choose activation-aware scales.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
import torch.nn as nn

from lmforge.atomic import atomic_directory, write_json_atomic
from lmforge.compress import METHODS, apply_quantization, quantization_of
from lmforge.data.tokenizers import Tokenizer
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.registry import load_model, save_model, traits_of, weights_for_saving
from lmforge.runs.rundir import check_out, is_task_model, read_model_config

# Files of a run that describe its data and task rather than its weights; copied as they are.
COPIED_FILES = ("config.yaml", "tokenizer.json")
# Calibration: at most this many windows of the calibration text, each at most this long (and the context).
CALIBRATION_WINDOWS = 8
CALIBRATION_WINDOW_TOKENS = 256


def quantize_run(run_dir: str | Path, out: str | Path, *, method: str = "int8", overwrite: bool = False,
                 group_size: int | None = None, calibration: str | Path | None = None) -> dict:
    """Write a `method`-quantized copy of the run in `run_dir` to `out`; returns its summary. int4 only:
    `group_size` (default 128) and `calibration`, a text file for activation-aware rounding."""
    started = time.perf_counter()
    if method not in METHODS:
        raise ConfigError(f"unknown quantization method {method!r}", f"choose --method {' or '.join(METHODS)}")
    run_dir = check_plain_run(Path(run_dir), "quantize")
    out = check_derived_out(run_dir, Path(out), overwrite)
    if (group_size is not None or calibration is not None) and not METHODS[method].grouped:
        raise ConfigError(f"--group_size and --calibration do not apply to --method {method}",
                          "use them with --method int4, or leave them out")
    text = read_calibration(Path(calibration)) if calibration is not None else None
    model = load_model(run_dir)
    if is_task_model(model) and model.config.lora:  # the adapters go into the weights before those are rounded
        model.backbone = model.plain_backbone()
        model.config.lora = None
    before = weight_bytes(model)
    windows = calibration_windows(model, run_dir, text) if text is not None else None
    record = apply_quantization(model, method, group_size=group_size, calibration=windows)
    summary = {"source": str(run_dir), "quantization": {k: v for k, v in record.items() if k != "modules"},
               "quantized_layers": len(record["modules"]), "weight_bytes_before": before,
               "weight_bytes_after": weight_bytes(model)}
    with atomic_directory(out) as tmp:
        for name in COPIED_FILES:
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, tmp / name)
        save_model(model, tmp)
        summary["wall_seconds"] = round(time.perf_counter() - started, 3)
        write_json_atomic(tmp / "summary.json", summary)
    return summary


def check_plain_run(run_dir: Path, verb: str) -> Path:
    """`run_dir` is an lmforge run whose weights are not quantized (what `verb` needs to start from)."""
    if not run_dir.is_dir() or not (run_dir / "model.safetensors").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no model.safetensors)",
                              "pass the --out directory of a training run")
    raw = read_model_config(run_dir)
    if "family" not in raw:
        raise ConfigError(f"{run_dir} is a Hugging Face model folder, not an lmforge run",
                          f"convert it first: `lmforge convert {run_dir} DIR --to lmforge`")
    done = quantization_of(raw)
    if done:
        raise ConfigError(f"{run_dir} is already quantized ({done.get('method')})",
                          f"{verb} the unquantized run it was made from")
    return run_dir


def check_derived_out(run_dir: Path, out: Path, overwrite: bool) -> Path:
    """`out` may receive a run derived from `run_dir`: not the run itself, and empty unless `overwrite`."""
    out = check_out(out)
    if out.exists() and (out.resolve() == run_dir.resolve() or out.resolve() in run_dir.resolve().parents):
        raise ConfigError(f"--out {out} would replace the run {run_dir}", "choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} already exists and is not empty",
                          "pass --overwrite to replace it, or choose another --out")
    return out


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the tensors `save_model` writes (tied ones once)."""
    return sum(t.numel() * t.element_size() for t in weights_for_saving(model).values())


def read_calibration(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"--calibration {path} is not a file", "pass a plain text file, e.g. some training text")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"--calibration {path} is not UTF-8 text (byte {e.start})", "convert it to UTF-8") from None
    if not text.strip():
        raise ConfigError(f"--calibration {path} is empty", "pass a file with text like the model's training text")
    return text


def calibration_windows(model: nn.Module, run_dir: Path, text: str,
                        count: int = CALIBRATION_WINDOWS) -> torch.Tensor:
    """Up to `count` windows (B, T) of `text`'s token ids, tokenized with the run's tokenizer."""
    if is_task_model(model) or traits_of(model).structure != "decoder":
        raise ConfigError("--calibration needs a language-model run (a decoder such as GPT or Llama)",
                          "quantize this run without --calibration")
    if not (run_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{run_dir / 'tokenizer.json'} is missing", "calibrate a run that has its tokenizer")
    ids = torch.tensor(Tokenizer.load(run_dir).encode(text), dtype=torch.long)
    length = min(CALIBRATION_WINDOW_TOKENS, model.config.block_size, len(ids))
    count = min(count, len(ids) // length)
    starts = torch.linspace(0, len(ids) - length, count).long().tolist()  # spread over the whole text
    return torch.stack([ids[s:s + length] for s in starts])

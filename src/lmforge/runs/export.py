"""`lmforge export RUN --format onnx --out DIR`: a run's model as an ONNX graph for onnxruntime.

DIR holds model.onnx (see `lmforge.interop.onnx` for its inputs and outputs), the run's tokenizer.json,
config.yaml and config.json copied as they are, and export.json describing the graph: its kind
(classifier or decoder), opset, inputs and outputs with their shapes, and the labels or cache layout.
A fine-tuned run's LoRA adapters are folded into its weights first. DIR is written whole or not at all.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from lmforge.atomic import atomic_directory, write_json_atomic
from lmforge.compress import quantization_of
from lmforge.errors import CheckpointError, ConfigError
from lmforge.interop.onnx import export_graph, graph_for
from lmforge.models.registry import load_model
from lmforge.runs.rundir import check_out, is_task_model, read_model_config

FORMATS = ("onnx",)
# Files of the run that describe its tokenizer, data, task and model config; copied as they are.
COPIED_FILES = ("tokenizer.json", "config.yaml", "config.json")


def export_run(run_dir: str | Path, out: str | Path, *, format: str = "onnx", overwrite: bool = False) -> dict:
    """Export the model of the run in `run_dir` to `out` in `format` (onnx); returns export.json's record."""
    started = time.perf_counter()
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}", f"choose --format {' or '.join(FORMATS)}")
    run_dir = _check_source(Path(run_dir))
    out = check_out(out)
    if out.exists() and (out.resolve() == run_dir.resolve() or out.resolve() in run_dir.resolve().parents):
        raise ConfigError(f"--out {out} would replace the run {run_dir}", "choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} already exists and is not empty",
                          "pass --overwrite to replace it, or choose another --out")
    model = load_model(run_dir)
    if is_task_model(model) and model.config.lora:  # the graph holds plain weights, adapters folded in
        model.backbone = model.plain_backbone()
        model.config.lora = None
    spec = graph_for(model.eval())  # an unsupported model is reported before anything is written
    with atomic_directory(out) as tmp:
        record = export_graph(spec, tmp / "model.onnx")
        for name in COPIED_FILES:
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, tmp / name)
        record = {"source": str(run_dir), **record, "wall_seconds": round(time.perf_counter() - started, 3)}
        write_json_atomic(tmp / "export.json", record)
    return record


def _check_source(run_dir: Path) -> Path:
    """`run_dir` as an lmforge run to export: not a Hugging Face folder, not quantized."""
    if not (run_dir / "model.safetensors").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no model.safetensors)",
                              "pass the --out directory of a training run")
    raw = read_model_config(run_dir)
    quantized = quantization_of(raw)
    if quantized:  # ONNX has no graph for lmforge's rounded-weight layers
        raise ConfigError(f"{run_dir} is quantized ({quantized.get('method')}) and cannot be exported to ONNX",
                          "export the run it was quantized from")
    if "family" not in raw:
        raise ConfigError(f"{run_dir} is a Hugging Face model folder, not an lmforge run",
                          f"convert it first: `lmforge convert {run_dir} DIR --to lmforge`")
    return run_dir

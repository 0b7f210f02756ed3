"""`lmforge compress report RUN [RUN ...] --out DIR`: compressed variants beside their original.

The first run is the original. For each run: size on disk, parameters, CPU latency at batch 1 and 8
(sequences of `seq_len` tokens) and the throughput that implies, and quality: the task metric on the
recipe's validation split for fine-tuned runs (with top-1 agreement and KL divergence against the
original's predictions for classifiers), perplexity on `--data` for language models (with agreement
of the next-token distributions on that text). Writes report.md, report.json and report.png, whole or
not at all.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmforge.atomic import atomic_directory
from lmforge.config import TaskDataConfig
from lmforge.errors import ConfigError
from lmforge.eval.agreement import agreement, interleaved_latency
from lmforge.eval.perplexity import perplexity_of_run
from lmforge.models.registry import load_model
from lmforge.runs.quantize import check_derived_out
from lmforge.runs.rundir import is_task_model, load, load_task_run
from lmforge.runs.starts import resolve_data_path
from lmforge.tasks import task_class

BATCH_SIZES = (1, 8)


def compress_report(runs: list[str | Path], out: str | Path, *, data: str | None = None, seq_len: int = 128,
                    repeats: int = 20, overwrite: bool = False) -> dict:
    """Measure `runs` (the first is the original) and write the report into `out`; returns its rows."""
    runs = [Path(r) for r in runs]
    if len(runs) < 1:
        raise ConfigError("compress report needs at least one run", "pass the original run, then its variants")
    for run in runs:
        if not (run / "model.safetensors").is_file():
            raise ConfigError(f"{run} is not a run directory (no model.safetensors)", "pass run directories")
    out = check_derived_out(runs[0], Path(out), overwrite)
    task_runs = {is_task_model(load_model(run)) for run in runs}
    if len(task_runs) > 1:
        raise ConfigError("compress report mixes fine-tuned and language-model runs",
                          "report a run and the variants made from it")
    rows, calls, reference = [], [], None
    for run in runs:
        row, logits, inputs = _task_row(run, seq_len) if task_runs == {True} else _lm_row(run, data, seq_len)
        if reference is None:
            reference = logits
        elif logits is not None and reference is not None:
            row.update(agreement(reference, logits))
        rows.append(row)
        calls.append(inputs)
    for b in BATCH_SIZES:  # the runs take turns, so that a change in the machine's load falls on all of them
        for row, seconds in zip(rows, interleaved_latency([inputs[b] for inputs in calls], repeats=repeats)):
            row[f"latency_ms_batch{b}"] = round(seconds * 1e3, 3)
            row[f"sequences_per_s_batch{b}"] = round(b / seconds, 2)
    original = rows[0]
    for row in rows:
        row["speedup_batch1"] = round(original["latency_ms_batch1"] / row["latency_ms_batch1"], 3)
        row["size_ratio"] = round(original["size_mb"] / row["size_mb"], 3)
    report = {"seq_len": seq_len, "repeats": repeats, "threads": torch.get_num_threads(), "rows": rows}
    with atomic_directory(out) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "report.md").write_text(markdown_table(rows) + "\n")
        _plot(rows, tmp / "report.png")
    report["markdown"] = markdown_table(rows)
    return report


def _common(run: Path, model) -> dict:
    return {"run": str(run), "size_mb": round((run / "model.safetensors").stat().st_size / 1e6, 3),
            "parameters": _parameters(model)}


def _parameters(model) -> int:
    """Weights the model holds, each quantized matrix at its logical size (a quantized output layer that shared
    the embedding matrix is a matrix of its own, and counts as one)."""
    dense = sum(p.numel() for p in model.parameters())
    packed = sum(m.in_features * m.out_features for m in model.modules()
                 if hasattr(m, "weight_int8") or hasattr(m, "weight_int4"))
    return dense + packed


def _task_row(run: Path, seq_len: int) -> tuple[dict, torch.Tensor | None, dict]:
    model, task = load_task_run(run)
    recipe_path = run / "config.yaml"
    recipe = yaml.safe_load(recipe_path.read_text()) if recipe_path.is_file() else {}
    data = TaskDataConfig(**{**(recipe.get("data") or {}), "train": "-"})
    if not data.valid:
        raise ConfigError(f"{recipe_path} names no validation file", "report runs fine-tuned with data.valid set")
    examples = task.read(resolve_data_path(data.valid))
    features = task.encode_all(examples)
    with torch.inference_mode():
        figures = task.evaluate(model.eval(), examples, features, batch_size=32)
    metric = task_class(model.config.task).main_metric
    ids = torch.tensor([t for f in features for t in f["input_ids"]][:seq_len * max(BATCH_SIZES)])
    inputs = {b: (lambda b=b: model(ids[:b * seq_len].view(b, seq_len),
                                    attention_mask=torch.ones(b, seq_len, dtype=torch.long))) for b in BATCH_SIZES}
    row = {**_common(run, model), "metric": metric, "value": figures.get(metric)}
    with torch.inference_mode():
        logits = task.logits(model, features, 32) if hasattr(task, "logits") else None
    return row, logits, inputs


def _lm_row(run: Path, data: str | None, seq_len: int) -> tuple[dict, torch.Tensor | None, dict]:
    if data is None:
        raise ConfigError("a language-model report needs text to score", "pass --data TEXT_FILE")
    model, tokenizer = load(run)
    text = Path(resolve_data_path(data)).read_text(encoding="utf-8")
    tokens = torch.tensor(tokenizer.encode(text))
    seq_len = min(seq_len, model.config.block_size)
    if tokens.numel() < seq_len * max(BATCH_SIZES):
        raise ConfigError(f"--data {data} has {tokens.numel()} tokens, fewer than {seq_len * max(BATCH_SIZES)}",
                          "pass a longer text")
    windows = tokens[:seq_len * max(BATCH_SIZES)].view(max(BATCH_SIZES), seq_len)
    inputs = {b: (lambda b=b: model(windows[:b])) for b in BATCH_SIZES}
    row = _common(run, model)
    row.update(metric="perplexity", value=perplexity_of_run(run, resolve_data_path(data))["perplexity"])
    with torch.inference_mode():
        logits = model(windows)
    return row, logits if torch.is_tensor(logits) else logits[0], inputs


def markdown_table(rows: list[dict]) -> str:
    head = ("| run | size MB | parameters | latency ms (b=1) | latency ms (b=8) | seq/s (b=8) | speed-up (b=1) "
            "| metric | top-1 agreement | KL |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        agree = f"{r['top1_agreement']:.4f}" if "top1_agreement" in r else "(original)"
        kl = f"{r['kl']:.2e}" if "kl" in r else ""
        value = f"{r['metric']} {r['value']:.4f}" if r.get("value") is not None else r.get("metric", "")
        lines.append(f"| {Path(r['run']).name} | {r['size_mb']:.1f} | {r['parameters']:,} "
                     f"| {r['latency_ms_batch1']:.1f} | {r['latency_ms_batch8']:.1f} | {r['sequences_per_s_batch8']:.1f} | {r['speedup_batch1']:.2f}x "
                     f"| {value} | {agree} | {kl} |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    """Quality against batch-1 latency, one point per run, marker area by size on disk."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for r in rows:
        ax.scatter(r["latency_ms_batch1"], r["value"] or 0.0, s=20 + 4 * r["size_mb"])
        ax.annotate(Path(r["run"]).name, (r["latency_ms_batch1"], r["value"] or 0.0), fontsize=8)
    ax.set_xlabel("latency at batch 1 (ms)")
    ax.set_ylabel(rows[0].get("metric") or "quality")
    ax.set_title("compressed variants beside the original (marker area: size on disk)")
    FigureCanvasAgg(fig).print_png(str(path))

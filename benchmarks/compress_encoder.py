"""Compressing a fine-tuned encoder classifier: lmforge's int8, structured pruning and distillation against
onnxruntime, the deployment route a user would otherwise take.

Starting from a fine-tuned classifier run (`--run`, e.g. sst2 from the pretrained MiniLM:
`lmforge finetune --config configs/finetune/sst2.yaml --out runs/sst2`), the script makes
  - int8: `lmforge quantize RUN --method int8` (weight-only);
  - dynamic int8: `lmforge quantize RUN --method dynamic-int8` (int8 activations too, fbgemm's kernels);
  - pruned: `lmforge prune RUN --method structured --sparsity S --recover_steps N` (or `--pruned RUN`);
  - pruned + dynamic int8: the pruned run quantized;
  - distilled: `--distilled RUN`, a student from `lmforge distill` (optional, not made here);
  - onnxruntime fp32: `lmforge export RUN`, run in onnxruntime;
  - onnxruntime int8: that graph through onnxruntime's own `quantize_dynamic` (int8 weights, int8
    activations quantized on the fly), which is what onnxruntime recommends for transformer encoders.
Each is timed at batch 1 on `--seq_len` tokens of validation text (median of `--repeats` calls after a
warm-up, all variants taking turns, `--threads` threads on both sides) and scored on the run's validation
split. The lmforge variants
go through `lmforge compress report`, whose table is written to OUT/report.md.

    python benchmarks/compress_encoder.py --run runs/sst2 [--pruned runs/sst2-pruned] [--distilled runs/sst2-half]
        [--sparsity 0.3 --recover_steps 220 --seq_len 128 --threads 1 --out runs/bench_compress]

The last line printed is one JSON object (see the benchmark contract in the README): `ratio` is
onnxruntime int8 latency / lmforge dynamic int8 latency (above 1: lmforge is faster; both quantize
activations on the fly); `int8_speedup` (dynamic int8), `weight_only_int8_speedup`, `pruned_speedup`,
`pruned_int8_speedup` and `distilled_speedup` are fp32 latency / the variant's, and `accuracy` holds each
variant's validation accuracy.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import yaml
from onnxruntime.quantization import QuantType, quantize_dynamic

import lmforge.api as lf
from lmforge.config import TaskDataConfig
from lmforge.eval.agreement import interleaved_latency
from lmforge.runs.rundir import load_task_run
from lmforge.runs.starts import resolve_data_path


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def validation(run: Path) -> tuple[object, list[dict]]:
    """(task, encoded validation features) of a fine-tuned run, from its recipe."""
    _, task = load_task_run(run)
    recipe = yaml.safe_load((run / "config.yaml").read_text())
    data = TaskDataConfig(**{**recipe["data"], "train": "-"})
    return task, task.encode_all(task.read(resolve_data_path(data.valid)))


def ort_feeds(session: ort.InferenceSession, batch: dict) -> dict:
    names = {i.name for i in session.get_inputs()}
    return {k: batch[k].numpy().astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")
            if k in names and k in batch}


def ort_logits(session: ort.InferenceSession, task, features: list[dict], batch_size: int = 32) -> np.ndarray:
    rows = []
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size]
        batch = task.collate([{k: v for k, v in f.items() if k != "class_labels"} for f in chunk])
        rows.append(session.run(["logits"], ort_feeds(session, batch))[0])
    return np.concatenate(rows)


def ort_call(session: ort.InferenceSession, ids: torch.Tensor):
    feeds = ort_feeds(session, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                "token_type_ids": torch.zeros_like(ids)})
    return lambda: session.run(["logits"], feeds)


def lmforge_call(run: Path, ids: torch.Tensor):
    model, _ = load_task_run(run)
    mask = torch.ones_like(ids)
    return lambda: model(ids, attention_mask=mask)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="fine-tuned encoder classifier run (e.g. runs/sst2)")
    p.add_argument("--pruned", default=None, help="an existing pruned run to use instead of pruning here")
    p.add_argument("--distilled", default=None, help="a distilled student run to measure beside (optional)")
    p.add_argument("--sparsity", type=float, default=0.3)
    p.add_argument("--recover_steps", type=int, default=220, help="recovery steps after pruning (~1 sst2 epoch)")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench_compress")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = {"fp32": run, "int8": out / "int8", "dynamic_int8": out / "dynamic_int8"}
    for name, method in (("int8", "int8"), ("dynamic_int8", "dynamic-int8")):
        if not variants[name].exists():
            lf.quantize(run, variants[name], method=method)
    pruned = Path(args.pruned) if args.pruned else out / "pruned"
    if not pruned.exists():
        lf.prune(run, pruned, method="structured", sparsity=args.sparsity, importance="taylor",
                 recover_steps=args.recover_steps)
    variants["pruned"], variants["pruned_int8"] = pruned, out / "pruned_int8"
    if not variants["pruned_int8"].exists():
        lf.quantize(pruned, variants["pruned_int8"], method="dynamic-int8")
    if args.distilled:
        variants["distilled"] = Path(args.distilled)
    report = lf.compress_report(list(variants.values()), out / "report", seq_len=args.seq_len,
                                repeats=args.repeats, overwrite=True)
    print(report["markdown"])
    rows = dict(zip(variants, report["rows"]))
    accuracy = {name: row["value"] for name, row in rows.items()}

    onnx_dir = out / "onnx"
    if not (onnx_dir / "model.onnx").exists():
        lf.export(run, onnx_dir, overwrite=True)
    int8_onnx = out / "onnx_int8.onnx"
    if not int8_onnx.exists():
        quantize_dynamic(str(onnx_dir / "model.onnx"), str(int8_onnx), weight_type=QuantType.QInt8, per_channel=True)
    task, features = validation(run)
    labels = np.array([f["class_labels"] for f in features])
    model, _ = load_task_run(run)
    with torch.inference_mode():
        ours = task.logits(model.eval(), features, 32).numpy()
    ids = torch.tensor([t for f in features for t in f["input_ids"]][:args.seq_len]).view(1, -1)
    logits_gap, calls = None, {name: lmforge_call(path, ids) for name, path in variants.items()}
    for name, path in (("ort_fp32", onnx_dir / "model.onnx"), ("ort_int8", int8_onnx)):
        session = ort_session(path, args.threads)
        calls[name] = ort_call(session, ids)
        logits = ort_logits(session, task, features)
        accuracy[name] = float((logits.argmax(-1) == labels).mean())
        if name == "ort_fp32":
            logits_gap = float(np.abs(logits - ours).max())
    print(f"onnxruntime fp32 vs lmforge fp32 on {len(features)} validation examples: max |logit difference| "
          f"{logits_gap:.2e}")

    # Every variant, lmforge's and onnxruntime's, timed in turns: a change in the machine's load falls on all.
    latency = dict(zip(calls, interleaved_latency(list(calls.values()), repeats=args.repeats)))
    print(f"\n| variant | latency ms (b=1, {args.seq_len} tokens) | speed-up vs lmforge fp32 | accuracy |")
    print("|---|---:|---:|---:|")
    for name in latency:
        print(f"| {name} | {latency[name] * 1e3:.2f} | {latency['fp32'] / latency[name]:.2f}x "
              f"| {accuracy[name]:.4f} |")
    result = {"benchmark": "compress_encoder", "threads": args.threads, "seq_len": args.seq_len,
              "ours": "lmforge dynamic-int8", "baseline": "onnxruntime quantize_dynamic int8",
              "ratio": round(latency["ort_int8"] / latency["dynamic_int8"], 3),
              "int8_speedup": round(latency["fp32"] / latency["dynamic_int8"], 3),
              "weight_only_int8_speedup": round(latency["fp32"] / latency["int8"], 3),
              "pruned_speedup": round(latency["fp32"] / latency["pruned"], 3),
              "pruned_int8_speedup": round(latency["fp32"] / latency["pruned_int8"], 3),
              "ort_fp32_speedup": round(latency["fp32"] / latency["ort_fp32"], 3),
              "ort_int8_speedup": round(latency["fp32"] / latency["ort_int8"], 3),
              "pruned_parameters_removed": round(1 - rows["pruned"]["parameters"] / rows["fp32"]["parameters"], 4),
              "onnx_fp32_max_logit_difference": logits_gap,
              "accuracy": {name: round(value, 4) for name, value in accuracy.items()}}
    if "distilled" in latency:
        result["distilled_speedup"] = round(latency["fp32"] / latency["distilled"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Weight-only int8 and int4 (`lmforge quantize --method int8|int4`) against fp32 and the int8 paths a user
would otherwise take.

Speed: batch-1 greedy decoding through lmforge's `generate` (the path of `lmforge generate`), on a GPT of
`--preset` shape (gpt2-124m by default) with random weights, from a `--prompt_tokens` prompt, timed as the
best of `--repeats` interleaved runs after a warm-up each. Compared, all with fp32 activations in and out:
  - fp32 eager, the model as `lmforge.load` prepares it;
  - lmforge int8 eager (`Int8Linear`: packed int8 kernel, products in bfloat16);
  - lmforge dynamic int8 eager (`DynamicInt8Linear`: int8 activations too, fbgemm's kernels);
  - lmforge int4 eager (`Int4Linear`, group size `--group_size`: packed int4 kernel, products in bfloat16);
  - lmforge int8 and fp32 compiled (`generate --compile`), unless `--no_compile`; compiling is not timed;
  - torchao int8 weight-only (`quantize_(model, Int8WeightOnlyConfig())`), when torchao is installed;
  - `torch.ao.quantization.quantize_dynamic` (int8 weights and dynamically quantized int8 activations).
Every method quantizes every nn.Linear, the output layer included.

Quality: the fp32 run `--quality_run` (default: a fresh `lmforge demo` run trained for `--demo_seconds`, a
small GPT on real text) is quantized with `lmforge.api.quantize`, and both runs are scored on the
validation split of its dataset: perplexity ratio int8 / fp32 and the share of positions where both
predict the same next token (top-1 agreement); likewise int4 with plain rounding and int4 calibrated on
`--calibration_tokens` tokens of the dataset's training split (so the scored text is not calibrated on).
int4 uses the largest group size <= `--group_size` that divides every layer's input width. Low rank:
`lmforge prune --method lowrank` removing `--lowrank_sparsity` of the blocks' weights, whitened on the
calibration text, beside plain SVD.

    python benchmarks/quantize.py [--preset gpt2-124m --new_tokens 64 --threads 1 --quality_run runs/demo]

The last line printed is one JSON object (see the benchmark contract in the README): `ours` is lmforge int8
eager decoding, the baseline torchao int8 weight-only (quantize_dynamic when torchao is missing).
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lmforge.api as lf
from lmforge.compress import GROUP_SIZES, apply_quantization, linear_layers
from lmforge.data.tokenizers import Tokenizer
from lmforge.eval.perplexity import perplexity_of_run
from lmforge.infer.generate import generate, prepare_for_inference
from lmforge.infer.sampling import SamplingParams
from lmforge.models.registry import build_model
from lmforge.runs.rundir import load


def timed_interleaved(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Best wall time of each function over `repeats` interleaved runs (after one warm-up each), and its output."""
    outs = {name: fn() for name, fn in fns.items()}
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, outs


def fitting_group_size(model: torch.nn.Module, at_most: int) -> int:
    """The largest int4 group size <= `at_most` that divides every linear layer's input width."""
    widths = [linear.in_features for _, linear in linear_layers(model)]
    return max(g for g in GROUP_SIZES if g <= at_most and all(w % g == 0 for w in widths))


def speed_models(preset: str, block_size: int, group_size: int) -> dict[str, torch.nn.Module]:
    """fp32, lmforge int8, and the int8 models of the other tools, all from the same random weights."""
    torch.manual_seed(0)
    fp32 = prepare_for_inference(build_model(preset, block_size=block_size).eval())
    models = {"fp32": fp32, "int8": copy.deepcopy(fp32), "dynamic_int8": copy.deepcopy(fp32),
              "int4": copy.deepcopy(fp32)}
    apply_quantization(models["int8"])
    apply_quantization(models["dynamic_int8"], "dynamic-int8")
    apply_quantization(models["int4"], "int4", group_size=fitting_group_size(fp32, group_size))
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_  # optional: pip install torchao

        models["torchao_int8"] = copy.deepcopy(fp32)
        quantize_(models["torchao_int8"], Int8WeightOnlyConfig())
    except ImportError:
        print("torchao is not installed: its int8 weight-only baseline is skipped (pip install torchao)")
    models["quantize_dynamic"] = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8)
    return models


def decode_speed(args) -> dict:
    models = speed_models(args.preset, args.block_size, args.group_size)
    vocab = models["fp32"].config.vocab_size
    prompt = torch.randint(0, vocab, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1)).tolist()
    params = SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens)
    fns = {name: (lambda m=m: generate(m, prompt, params)) for name, m in models.items()}
    compile_seconds = {}
    if not args.no_compile:
        for name in ("fp32", "int8"):
            t0 = time.perf_counter()
            generate(models[name], prompt, params, compile=True)
            compile_seconds[name] = round(time.perf_counter() - t0, 1)
            fns[f"{name}_compiled"] = lambda m=models[name]: generate(m, prompt, params, compile=True)
    best, outs = timed_interleaved(fns, args.repeats)
    speed = {name: args.new_tokens / seconds for name, seconds in best.items()}
    same = {name: sum(a == b for a, b in zip(out[0], outs["fp32"][0])) / args.new_tokens for name, out in outs.items()}
    print(f"{args.preset}: {sum(p.numel() for p in models['fp32'].parameters()) / 1e6:.1f}M parameters, "
          f"prompt {args.prompt_tokens} + {args.new_tokens} new tokens, batch 1, {torch.get_num_threads()} threads")
    for name, tps in speed.items():
        print(f"  {name:18s} {tps:8.2f} tokens/s   greedy tokens equal to fp32 eager: {same[name]:.0%}")
    if compile_seconds:
        print(f"  compiling took {compile_seconds} s (not timed above)")
    return speed


def quality(args) -> dict:
    """Perplexity ratio and top-1 agreement, int8 vs fp32, on the validation split of a trained run's data."""
    run = Path(args.quality_run) if args.quality_run else Path(tempfile.mkdtemp(prefix="lmforge-quantize-")) / "demo"
    if not args.quality_run:
        lf.demo(run, max_seconds=args.demo_seconds)
    data = Path(args.quality_data) if args.quality_data else run / "data"
    meta = json.loads((data / "meta.json").read_text())
    dtype = np.dtype(meta.get("dtype", "uint16"))
    scratch = Path(tempfile.mkdtemp(prefix="lmforge-quantize-"))
    calibration = scratch / "calibration.txt"
    train_ids = np.memmap(data / "train.bin", dtype=dtype, mode="r")[: args.calibration_tokens]
    calibration.write_text(Tokenizer.load(run).decode([int(t) for t in train_ids]))
    exact, _ = load(run)
    group_size = fitting_group_size(exact, args.group_size)
    runs = {"fp32": run, "int8": scratch / "int8", "dynamic_int8": scratch / "dynamic_int8", "int4": scratch / "int4",
            "int4_plain": scratch / "int4_plain", "lowrank": scratch / "lowrank", "lowrank_plain": scratch / "svd"}
    lf.quantize(run, runs["int8"])
    lf.quantize(run, runs["dynamic_int8"], method="dynamic-int8")
    lf.prune(run, runs["lowrank"], method="lowrank", sparsity=args.lowrank_sparsity, calibration=calibration)
    lf.prune(run, runs["lowrank_plain"], method="lowrank", sparsity=args.lowrank_sparsity, whiten=False)
    lf.quantize(run, runs["int4"], method="int4", group_size=group_size, calibration=calibration)
    lf.quantize(run, runs["int4_plain"], method="int4", group_size=group_size)
    ppl = {name: perplexity_of_run(path, data)["perplexity"] for name, path in runs.items()}
    tokens = np.memmap(data / "val.bin", dtype=dtype, mode="r")
    block = exact.config.block_size
    windows = torch.from_numpy(np.asarray(tokens[: (len(tokens) // block) * block], dtype=np.int64)).view(-1, block)
    figures = {f"ppl_{name}": value for name, value in ppl.items()}
    for name in ("int8", "dynamic_int8", "int4", "int4_plain", "lowrank", "lowrank_plain"):
        figures[f"top1_agreement_{name}"] = top1_agreement(exact, load(runs[name])[0], windows[: args.quality_windows])
    print(f"quality on {data} (int4 group size {group_size}): perplexity "
          + ", ".join(f"{name} {value:.3f}" for name, value in ppl.items()) + "; top-1 agreement "
          + ", ".join(f"{name} {figures[f'top1_agreement_{name}']:.4f}" for name in ppl if name != "fp32"))
    return {**figures, "int4_group_size_quality": group_size}


def top1_agreement(exact: torch.nn.Module, ours: torch.nn.Module, windows: torch.Tensor) -> float:
    """Share of positions of `windows` (B, T) where both models predict the same next token."""
    agree = total = 0
    with torch.inference_mode():
        for batch in windows.split(8):
            agree += int((exact(batch).argmax(-1) == ours(batch).argmax(-1)).sum())
            total += batch.numel()
    return agree / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="gpt2-124m", help="model shape for the speed comparison (random weights)")
    ap.add_argument("--block_size", type=int, default=512)
    ap.add_argument("--prompt_tokens", type=int, default=32)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--no_compile", action="store_true", help="do not time compiled decoding")
    ap.add_argument("--quality_run", default=None, help="trained fp32 run directory (default: a fresh demo run)")
    ap.add_argument("--quality_data", default=None, help="prepared dataset to score (default: RUN/data)")
    ap.add_argument("--quality_windows", type=int, default=64, help="context windows for top-1 agreement")
    ap.add_argument("--demo_seconds", type=float, default=60.0)
    ap.add_argument("--group_size", type=int, default=128, help="int4 group size (at most; see above)")
    ap.add_argument("--lowrank_sparsity", type=float, default=0.2, help="share of the blocks' weights lowrank removes")
    ap.add_argument("--calibration_tokens", type=int, default=20000, help="training tokens to calibrate int4 on")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    speed = decode_speed(args)
    figures = quality(args)
    baseline_name = "torchao_int8" if "torchao_int8" in speed else "quantize_dynamic"
    out = {"benchmark": "quantize", "device": "cpu", "model": args.preset, "ours": round(speed["int8"], 2),
           "baseline_name": {"torchao_int8": "torchao int8 weight-only",
                             "quantize_dynamic": "torch.ao quantize_dynamic"}[baseline_name],
           "baseline": round(speed[baseline_name], 2), "unit": "tokens/s (batch-1 decode)",
           "ratio": round(speed["int8"] / speed[baseline_name], 3),
           "int8_vs_fp32_eager": round(speed["int8"] / speed["fp32"], 3),
           "int4_vs_fp32_eager": round(speed["int4"] / speed["fp32"], 3),
           "tokens_per_s": {name: round(v, 2) for name, v in speed.items()}}
    if "int8_compiled" in speed:
        out["int8_vs_fp32_compiled"] = round(speed["int8_compiled"] / speed["fp32_compiled"], 3)
    out["ratio_vs_quantize_dynamic"] = round(speed["int8"] / speed["quantize_dynamic"], 3)
    out.update(ppl_ratio_int8=round(figures["ppl_int8"] / figures["ppl_fp32"], 4),
               top1_agreement_int8=round(figures["top1_agreement_int8"], 4),
               ppl_fp32=round(figures["ppl_fp32"], 3), ppl_int8=round(figures["ppl_int8"], 3),
               ppl_ratio_int4=round(figures["ppl_int4"] / figures["ppl_fp32"], 4),
               ppl_ratio_int4_plain=round(figures["ppl_int4_plain"] / figures["ppl_fp32"], 4),
               top1_agreement_int4=round(figures["top1_agreement_int4"], 4),
               top1_agreement_int4_plain=round(figures["top1_agreement_int4_plain"], 4),
               ppl_int4=round(figures["ppl_int4"], 3), ppl_int4_plain=round(figures["ppl_int4_plain"], 3),
               int4_group_size_quality=figures["int4_group_size_quality"], threads=torch.get_num_threads(),
               dynamic_int8_vs_fp32_eager=round(speed["dynamic_int8"] / speed["fp32"], 3),
               ppl_ratio_dynamic_int8=round(figures["ppl_dynamic_int8"] / figures["ppl_fp32"], 4),
               top1_agreement_dynamic_int8=round(figures["top1_agreement_dynamic_int8"], 4),
               ppl_ratio_lowrank=round(figures["ppl_lowrank"] / figures["ppl_fp32"], 4),
               ppl_ratio_lowrank_plain_svd=round(figures["ppl_lowrank_plain"] / figures["ppl_fp32"], 4))
    print(json.dumps(out))


if __name__ == "__main__":
    main()

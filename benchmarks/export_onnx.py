"""Speed of lmforge models exported to ONNX (`lmforge export`) in onnxruntime vs the same models in lmforge.

Two measurements, both in fp32 on the CPU with `--threads` threads on each side (1 by default):
- an encoder sequence classifier (MiniLM-L6 shape: 6 layers, width 384, 12 heads) at batch 1 and
  `--seq_len` tokens: the best latency of lmforge's PyTorch forward and of onnxruntime on the exported graph.
  `ratio` = onnxruntime speed / lmforge speed (above 1: onnxruntime is faster).
- a GPT decoder (6 layers, width 384, 6 heads): greedy decoding of `--new_tokens` tokens from a
  `--prompt_tokens` prompt at batch 1, lmforge's eager `generate` vs an onnxruntime loop over the
  exported step graph that feeds each step's key/value cache back in. `decode_ratio` = onnxruntime / lmforge
  tokens per second. Both sides must produce the same tokens, or the script fails.

Weights are random (speed does not depend on them); the export itself is not timed.

    python benchmarks/export_onnx.py [--threads 1 --seq_len 128 --prompt_tokens 32 --new_tokens 64 --repeats 5]

The last line printed is one JSON object (see the benchmark contract in the README).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from lmforge.infer.generate import generate, prepare_for_inference
from lmforge.infer.sampling import SamplingParams
from lmforge.interop.onnx import export_graph, graph_for
from lmforge.models.heads import TaskModel, TaskModelConfig
from lmforge.models.registry import build_model, preset_config


def best_seconds(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of `fn` over `repeats` runs after one warm-up, and its last output."""
    out, best = fn(), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def encoder(args, folder: Path) -> dict:
    backbone = preset_config("bert-base", vocab_size=30522, n_layer=6, n_embd=384, n_head=12, intermediate_size=1536)
    model = TaskModel(TaskModelConfig(task="classify", backbone=backbone.to_dict(), labels=["0", "1"])).eval()
    export_graph(graph_for(model), folder / "encoder.onnx")
    ids = torch.randint(0, 30522, (1, args.seq_len))
    mask, types = torch.ones_like(ids), torch.zeros_like(ids)
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
    runtime = session(folder / "encoder.onnx", args.threads)
    with torch.inference_mode():
        ours, expected = best_seconds(lambda: model(ids, mask, types), args.repeats)
    theirs, (got,) = best_seconds(lambda: runtime.run(None, feed), args.repeats)
    return {"encoder_ms_lmforge": round(ours * 1e3, 3), "encoder_ms_onnxruntime": round(theirs * 1e3, 3),
            "encoder_max_abs_diff": float(np.abs(got - expected.numpy()).max()), "ratio": round(ours / theirs, 3)}


def onnx_greedy(runtime: ort.InferenceSession, prompt: list[int], steps: int, cache: dict) -> list[int]:
    past = {f"past_{kind}_{layer}": np.zeros((1, cache["kv_heads"], 0, cache["head_dim"]), np.float32)
            for layer in range(cache["layers"]) for kind in ("key", "value")}
    ids, new = np.array([prompt], np.int64), []
    for _ in range(steps):
        length = next(iter(past.values())).shape[2]
        logits, *present = runtime.run(None, {
            "input_ids": ids, "attention_mask": np.ones((1, length + ids.shape[1]), np.int64),
            "position_ids": np.arange(length, length + ids.shape[1], dtype=np.int64)[None], **past})
        new.append(int(logits[0, -1].argmax()))
        past, ids = dict(zip(past, present)), np.array([[new[-1]]], np.int64)
    return new


def decoder(args, folder: Path) -> dict:
    model = build_model("gpt2-124m", vocab_size=8192, block_size=512, n_layer=6, n_embd=384, n_head=6).eval()
    record = export_graph(graph_for(model), folder / "decoder.onnx")
    model = prepare_for_inference(model)
    prompt = torch.randint(0, 8192, (args.prompt_tokens,)).tolist()
    params = SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens)
    runtime = session(folder / "decoder.onnx", args.threads)
    ours, expected = best_seconds(lambda: generate(model, [prompt], params)[0], args.repeats)
    theirs, got = best_seconds(lambda: onnx_greedy(runtime, prompt, args.new_tokens, record["cache"]), args.repeats)
    if got != expected:
        raise SystemExit(f"onnxruntime decoded other tokens than lmforge: {got[:8]} vs {expected[:8]}")
    return {"decode_tokens_per_s_lmforge": round(args.new_tokens / ours, 1),
            "decode_tokens_per_s_onnxruntime": round(args.new_tokens / theirs, 1),
            "decode_ratio": round(ours / theirs, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seq_len", type=int, default=128)
    ap.add_argument("--prompt_tokens", type=int, default=32)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        result = {"threads": args.threads, "seq_len": args.seq_len, "new_tokens": args.new_tokens,
                  "onnxruntime": ort.__version__, "torch": torch.__version__,
                  **encoder(args, Path(folder)), **decoder(args, Path(folder))}
    for key, value in result.items():
        print(f"{key:32s} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

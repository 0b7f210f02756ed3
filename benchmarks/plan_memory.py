"""`lmforge plan`'s memory estimate against the peak memory of real training steps on this CPU.

Each configuration (preset, micro-batch, sequence length, activation checkpointing) runs in a fresh
process: it first trains a tiny model for one step (loading the kernels and allocator pools every
step needs), takes its resident memory as the baseline, then builds the model and runs `--steps` real
training steps through lmforge's trainer (fp32, fused AdamW, gradient clipping, the fused output layer).
Measured = peak resident memory (`resource.getrusage` ru_maxrss) minus the baseline. glibc is told
to serve blocks over 64 KB from mmap (MALLOC_MMAP_THRESHOLD_), so freed tensors leave resident
memory at once instead of staying in the heap, as CUDA's caching allocator's `max_memory_allocated`
counts only live tensors.
Plan = `lmforge plan --gpu cpu --precision fp32` for the same configuration (steady state: optimizer
moments exist, gradients are freed after each step).

    python benchmarks/plan_memory.py [--steps 3] [--large]

The last line is one JSON object: `worst_relative_error` (|plan - measured| / measured, worst case) and
`ratio` = 1 - worst_relative_error (1 means plan and measurement agree exactly).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

import torch

CONFIGS = [
    # preset, micro-batch, sequence length, activation checkpointing
    ("gpt-mini", 8, 256, "none"),
    ("gpt-mini", 8, 256, "full"),
    ("gpt-mini", 8, 256, "selective"),
    ("gpt-mini", 2, 256, "none"),
    ("gpt-char-medium", 16, 256, "none"),
    ("gpt-char-medium", 16, 256, "full"),
    ("llama-debug", 64, 128, "none"),
    ("llama-debug", 64, 128, "selective"),
]
LARGE = [("gpt2-124m", 2, 256, "none"), ("gpt2-124m", 2, 256, "full")]


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def train_steps(preset: str, micro_batch: int, seq_len: int, checkpointing: str, steps: int) -> None:
    from lmforge.config import TrainConfig
    from lmforge.models.registry import build_model
    from lmforge.train.trainer import Trainer

    cfg = TrainConfig(batch_size=micro_batch, seq_len=seq_len, activation_checkpointing=checkpointing,
                      precision="fp32", device="cpu", progress=False, warmup_steps=0)
    model = build_model(preset)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, None, cfg, run_dir)
        vocab = model.config.vocab_size
        for _ in range(steps):
            ids = torch.randint(0, vocab, (micro_batch, seq_len + 1))
            trainer.train_step([{"input_ids": ids[:, :-1], "labels": ids[:, 1:]}])


def child(args) -> None:
    torch.set_num_threads(1)
    train_steps("debug", 2, 16, args.checkpointing, 2)  # warm-up: kernels, autograd engine, allocator pools
    baseline = resident_bytes()
    train_steps(args.preset, args.micro_batch, args.seq_len, args.checkpointing, args.steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"measured_bytes": peak - baseline}))


def measure(preset: str, micro_batch: int, seq_len: int, checkpointing: str, steps: int) -> int:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", "--preset", preset, "--micro_batch", str(micro_batch),
           "--seq_len", str(seq_len), "--checkpointing", checkpointing, "--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])["measured_bytes"]


def planned(preset: str, micro_batch: int, seq_len: int, checkpointing: str) -> dict:
    from lmforge.train.plan import PlanRequest, plan

    return plan(PlanRequest(model=preset, gpu="cpu", gpu_memory=16, precision="fp32", seq_len=seq_len,
                            micro_batch=micro_batch, activation_checkpointing=checkpointing))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--large", action="store_true", help="also gpt2-124m (about 2.5 GB, a few minutes)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preset")
    p.add_argument("--micro_batch", type=int)
    p.add_argument("--seq_len", type=int)
    p.add_argument("--checkpointing")
    args = p.parse_args()
    if args.child:
        return child(args)
    rows = []
    print(f"{'preset':16s} {'batch':>5s} {'seq':>4s} {'ckpt':9s} {'plan MB':>9s} {'measured MB':>11s} {'error':>7s}  "
          f"plan parts MB (weights/grads/optimizer/activations/buffers)")
    for preset, batch, seq, ckpt in CONFIGS + (LARGE if args.large else []):
        result = planned(preset, batch, seq, ckpt)
        mem = result["memory_per_gpu_gb"]
        plan_bytes = mem["total"] * (1 << 30)
        measured = measure(preset, batch, seq, ckpt, args.steps)
        error = (plan_bytes - measured) / measured
        parts = "/".join(f"{mem[k] * 1024:.1f}" for k in ("weights", "gradients", "optimizer_states",
                                                            "activations", "buffers"))
        print(f"{preset:16s} {batch:5d} {seq:4d} {ckpt:9s} {plan_bytes / 2**20:9.1f} {measured / 2**20:11.1f} "
              f"{error:+7.1%}  {parts}", flush=True)
        rows.append({"preset": preset, "micro_batch": batch, "seq_len": seq, "activation_checkpointing": ckpt,
                     "plan_mb": round(plan_bytes / 2**20, 1), "measured_mb": round(measured / 2**20, 1),
                     "relative_error": round(error, 4)})
    worst = max(abs(r["relative_error"]) for r in rows)
    print(json.dumps({"benchmark": "plan_memory", "configs": rows, "worst_relative_error": round(worst, 4),
                      "ratio": round(1 - worst, 4), "torch": torch.__version__, "threads": 1}))


if __name__ == "__main__":
    main()

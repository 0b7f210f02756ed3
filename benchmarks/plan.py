"""`lmforge plan` against real training steps on this CPU: peak memory per process, and tokens/s given the
MFU measured on one configuration of the same preset.

Each configuration (preset, micro-batch, sequence length, activation checkpointing, one process or 2 gloo
ranks under DDP or FSDP) runs in fresh processes: each first trains a tiny model for two steps (loading the
kernels and allocator pools every step needs), takes its resident memory as the baseline, then builds the
model and runs `--steps` real training steps through lmforge's trainer (fp32, fused AdamW, gradient
clipping, the fused output layer). Measured memory = peak resident memory (`resource.getrusage` ru_maxrss)
minus the baseline, the largest over the ranks. glibc is told to serve blocks over 64 KB from mmap
(MALLOC_MMAP_THRESHOLD_), so freed tensors leave resident memory at once instead of staying in the heap, as
CUDA's caching allocator's `max_memory_allocated` counts only live tensors.
Plan = `lmforge plan --gpu cpu --precision fp32 --gpus RANKS --parallel ...` for the same configuration.

Throughput: tokens/s over the steps after the first. The first configuration of each preset (one process,
no checkpointing) gives the measured MFU (against this core's fp32 matmul rate, measured here); `plan` is
then given that MFU for the preset's other configurations and its tokens/s compared with theirs (so its
recompute cost under full checkpointing and its scaling over ranks are what is tested).

    flock /work/notes/cpu.lock python benchmarks/plan.py [--steps 4] [--large]

The last line is one JSON object: `worst_relative_error` (|plan - measured| / measured, worst case over the
memory figures), `worst_throughput_error` over the throughput figures, and `ratio` = 1 - worst_relative_error.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CONFIGS = [
    # preset, micro-batch, sequence length, activation checkpointing, parallel, ranks
    ("gpt-mini", 8, 256, "none", "ddp", 1),
    ("gpt-mini", 8, 256, "full", "ddp", 1),
    ("gpt-mini", 8, 256, "selective", "ddp", 1),
    ("gpt-mini", 2, 256, "none", "ddp", 1),
    ("gpt-mini", 8, 256, "none", "ddp", 2),
    ("gpt-mini", 8, 256, "none", "fsdp", 2),
    ("gpt-mini", 8, 256, "full", "fsdp", 2),
    ("gpt-char-medium", 16, 256, "none", "ddp", 1),
    ("gpt-char-medium", 16, 256, "full", "ddp", 1),
    ("llama-debug", 64, 128, "none", "ddp", 1),
    ("llama-debug", 64, 128, "selective", "ddp", 1),
    ("llama-debug", 64, 128, "none", "fsdp", 2),
]
LARGE = [("gpt2-124m", 2, 256, "none", "ddp", 1), ("gpt2-124m", 2, 256, "full", "ddp", 1)]


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def train_steps(preset: str, micro_batch: int, seq_len: int, checkpointing: str, parallel: str, steps: int,
                dist) -> float:
    """Run `steps` training steps; seconds taken by all but the first."""
    from lmforge.config import TrainConfig
    from lmforge.models.registry import build_model
    from lmforge.train.trainer import Trainer

    cfg = TrainConfig(batch_size=micro_batch, seq_len=seq_len, activation_checkpointing=checkpointing,
                      parallel=parallel, precision="fp32", device="cpu", progress=False, warmup_steps=0)
    torch.manual_seed(0)
    model = build_model(preset)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, None, cfg, run_dir, dist=dist)
        vocab = model.config.vocab_size
        for step in range(steps):
            if step == 1:
                start = time.perf_counter()
            ids = torch.randint(0, vocab, (micro_batch, seq_len + 1))
            trainer.train_step([{"input_ids": ids[:, :-1], "labels": ids[:, 1:]}])
        return time.perf_counter() - start


def child(args) -> None:
    from lmforge.parallel import init_distributed, shutdown_distributed

    torch.set_num_threads(1)
    dist = init_distributed("cpu")
    train_steps("debug", 2, 16, args.checkpointing, args.parallel, 2, dist)  # warm-up
    baseline = resident_bytes()
    seconds = train_steps(args.preset, args.micro_batch, args.seq_len, args.checkpointing, args.parallel,
                          args.steps, dist)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(f"{args.out}.{dist.rank}").write_text(json.dumps({"measured_bytes": peak - baseline, "seconds": seconds}))
    shutdown_distributed()


def measure(config: tuple, steps: int) -> dict:
    preset, micro_batch, seq_len, checkpointing, parallel, ranks = config
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "OMP_NUM_THREADS": "1"}
    launcher = ([sys.executable] if ranks == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"])
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "measured")
        cmd = [*launcher, __file__, "--child", "--preset", preset, "--micro_batch", str(micro_batch),
               "--seq_len", str(seq_len), "--checkpointing", checkpointing, "--parallel", parallel,
               "--steps", str(steps), "--out", out]
        subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, timeout=1800)
        per_rank = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(ranks)]
    seconds = max(r["seconds"] for r in per_rank)
    return {"measured_bytes": max(r["measured_bytes"] for r in per_rank),
            "tokens_per_second": micro_batch * seq_len * ranks * (steps - 1) / seconds}


def matmul_tflops(size: int = 1024, repeats: int = 20) -> float:
    """This core's fp32 matmul rate (one thread): the peak MFU is measured against."""
    torch.set_num_threads(1)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def planned(config: tuple, mfu: float, peak_tflops: float) -> dict:
    from lmforge.train.plan import PlanRequest, plan

    preset, micro_batch, seq_len, checkpointing, parallel, ranks = config
    return plan(PlanRequest(model=preset, gpu="cpu", gpu_memory=16, precision="fp32", seq_len=seq_len,
                            micro_batch=micro_batch, activation_checkpointing=checkpointing, parallel=parallel,
                            gpus=ranks, mfu=mfu, peak_tflops=peak_tflops))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--large", action="store_true", help="also gpt2-124m (about 2.5 GB, a few minutes)")
    p.add_argument("--only", type=int, default=None, help="run only the first N configurations")
    for hidden in ("--preset", "--checkpointing", "--parallel", "--out"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    for hidden in ("--micro_batch", "--seq_len"):
        p.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    peak = matmul_tflops()
    rows, mfu_of = [], {}
    print(f"fp32 matmul rate of one core: {peak * 1e3:.1f} GFLOPS (the peak MFU is measured against)")
    print(f"{'preset':15s} {'batch':>5s} {'seq':>4s} {'ckpt':9s} {'par':4s} {'ranks':>5s} {'plan MB':>8s} "
          f"{'meas MB':>8s} {'error':>7s} {'MFU':>6s} {'plan tok/s':>10s} {'meas tok/s':>10s} {'error':>7s}")
    for config in (CONFIGS + (LARGE if args.large else []))[:args.only]:
        preset, batch, seq, ckpt, parallel, ranks = config
        measured = measure(config, args.steps)
        reference = preset not in mfu_of
        if reference:  # this preset's first configuration: its measured MFU is what plan is given
            flops = planned(config, 0.5, peak)["flops_per_token"]
            mfu_of[preset] = measured["tokens_per_second"] * flops / (peak * 1e12)
        result = planned(config, mfu_of[preset], peak)
        plan_bytes = result["memory_per_gpu_gb"]["total"] * (1 << 30)
        error = (plan_bytes - measured["measured_bytes"]) / measured["measured_bytes"]
        tps_error = (result["tokens_per_second"] - measured["tokens_per_second"]) / measured["tokens_per_second"]
        print(f"{preset:15s} {batch:5d} {seq:4d} {ckpt:9s} {parallel:4s} {ranks:5d} {plan_bytes / 2**20:8.1f} "
              f"{measured['measured_bytes'] / 2**20:8.1f} {error:+7.1%} {mfu_of[preset]:6.1%} "
              f"{result['tokens_per_second']:10.0f} {measured['tokens_per_second']:10.0f} "
              f"{'(given)' if reference else f'{tps_error:+7.1%}'}", flush=True)
        rows.append({"preset": preset, "micro_batch": batch, "seq_len": seq, "activation_checkpointing": ckpt,
                     "parallel": parallel, "ranks": ranks, "plan_mb": round(plan_bytes / 2**20, 1),
                     "measured_mb": round(measured["measured_bytes"] / 2**20, 1), "relative_error": round(error, 4),
                     "mfu": round(mfu_of[preset], 4), "plan_tokens_per_second": result["tokens_per_second"],
                     "measured_tokens_per_second": round(measured["tokens_per_second"], 1),
                     "throughput_error": None if reference else round(tps_error, 4)})
    worst = max(abs(r["relative_error"]) for r in rows)
    speeds = [abs(r["throughput_error"]) for r in rows if r["throughput_error"] is not None]
    print(json.dumps({"benchmark": "plan", "configs": rows, "worst_relative_error": round(worst, 4),
                      "worst_throughput_error": round(max(speeds), 4) if speeds else None,
                      "ratio": round(1 - worst, 4), "matmul_gflops": round(peak * 1e3, 1),
                      "torch": torch.__version__, "threads": 1}))


if __name__ == "__main__":
    main()

"""Training throughput of lmforge's GPT against Hugging Face transformers' GPT2LMHeadModel.

    python benchmarks/train_throughput.py [--n_layer 6 --n_head 6 --n_embd 384 --vocab_size 8192]
                                          [--seq_len 256 --batch_size 8 --steps 10 --precision auto]

Both sides train the same GPT-2 shape (learned positions, LayerNorm, tanh-GELU MLP, tied
embeddings, no dropout) on the same batches, with the same optimizer: torch AdamW with
identical hyperparameters and parameter groups (no decay on norms, biases and embeddings),
gradient clipping at the same norm, in the same process. lmforge runs through
`Trainer.train_step`, the step `lmforge pretrain` takes; transformers runs
`model(input_ids, labels=input_ids).loss`, `backward()`, clip, `step()` with its default
attention implementation. A step is timed from the batch on the host to the updated
weights; warm-up steps (which include compilation) are not timed, and the reported figure
is the median over the timed steps. The two models alternate step by step, so a change in
machine load affects both alike; a step during which other processes kept a CPU core busy
is measured again (`--max_other_cpu`).

`ratio` compares the two at the same precision (`--precision`; `auto` is bf16 where the
hardware computes it natively - GPUs, CPUs with AVX512-BF16 or AMX - and fp32 elsewhere). Unless `--no_extras`, the JSON also holds each side at fp32 and bf16 and
the ratio of lmforge's fastest setting to each transformers setting.

The last line printed is one JSON object (see the benchmark contract in the README).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lmforge.config import TrainConfig  # noqa: E402
from lmforge.models.gpt import GPTConfig, flops_per_token  # noqa: E402
from lmforge.models.registry import build_model  # noqa: E402
from lmforge.device import resolve_device
from lmforge.parallel import DistInfo  # noqa: E402
from lmforge.train.optim import parameter_groups  # noqa: E402
from lmforge.train.precision import cpu_has_native_bf16, resolve_precision  # noqa: E402
from lmforge.train.trainer import Trainer  # noqa: E402


@dataclass
class Contestant:
    name: str
    step: Callable[[torch.Tensor, torch.Tensor], float]
    times: list[float] = field(default_factory=list)
    first_step_seconds: float = 0.0
    remeasured: int = 0

    def tokens_per_second(self, tokens_per_step: int) -> float:
        return tokens_per_step / statistics.median(self.times)


def train_config(args, precision: str, compile: bool) -> TrainConfig:
    return TrainConfig(batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, betas=(0.9, 0.95),
                       weight_decay=args.weight_decay, grad_clip=args.grad_clip, warmup_steps=0,
                       precision=precision, compile=compile, device=args.device, progress=False)


def lmforge_contestant(args, precision: str, compile: bool, device: torch.device, run_dir: Path) -> Contestant:
    torch.manual_seed(args.seed)
    model = build_model(GPTConfig(vocab_size=args.vocab_size, block_size=args.seq_len, n_layer=args.n_layer,
                                  n_head=args.n_head, n_embd=args.n_embd, dropout=0.0))
    trainer = Trainer(model, None, train_config(args, precision, compile), run_dir, dist=DistInfo(device=device))

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        return trainer.train_step([(x, y)])

    return Contestant(f"lmforge {precision}{' compiled' if compile else ''}", step)


def transformers_contestant(args, precision: str, device: torch.device) -> Contestant:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    cfg = GPT2Config(vocab_size=args.vocab_size, n_positions=args.seq_len, n_embd=args.n_embd, n_layer=args.n_layer,
                     n_head=args.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).to(device).train()
    tcfg = train_config(args, precision, False)
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    opt = torch.optim.AdamW(parameter_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=tcfg.betas, eps=tcfg.eps,
                            **fused)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return Contestant(f"transformers {precision}", step)


def gpu_peak_bf16_tflops(name: str) -> float | None:
    """Dense bf16 tensor-core peak of the GPUs whose figure is published (SXM parts; PCIe ones are lower)."""
    for key, tflops in (("H200", 989.0), ("H100", 989.0), ("A100", 312.0)):
        if key in name:
            return tflops
    return None


class _CpuMeter:
    """CPU time used by other processes while a step ran, in cores (Linux /proc/stat; 0 elsewhere)."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _busy(self) -> float:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except OSError:
            return 0.0
        return (sum(v) - v[3] - v[4]) / self.tick

    def start(self):
        self.t, self.busy, self.own = time.perf_counter(), self._busy(), time.process_time()

    def other_cores(self) -> float:
        elapsed = max(time.perf_counter() - self.t, 1e-9)
        others = (self._busy() - self.busy) - (time.process_time() - self.own)
        return max(0.0, others / elapsed)


def measure(contestants: list[Contestant], args, device: torch.device) -> None:
    """Alternate the contestants step by step over the same batches."""
    gen = torch.Generator().manual_seed(args.seed)
    meter = _CpuMeter()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(args.warmup + args.steps):
        seq = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len + 1), generator=gen)
        x, y = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
        for c in contestants:
            for attempt in range(args.retries + 1):
                sync()
                meter.start()
                c.step(x, y)
                sync()
                seconds = time.perf_counter() - meter.t
                busy = meter.other_cores() if device.type == "cpu" else 0.0
                if i == 0 and attempt == 0:
                    c.first_step_seconds = seconds
                if i < args.warmup or busy <= args.max_other_cpu or attempt == args.retries:
                    break
                c.remeasured += 1
            if i >= args.warmup:
                c.times.append(seconds)
            if args.verbose:
                print(f"step {i:3d} {c.name:28s} {seconds * 1000:8.1f} ms  other processes {busy:.2f} cores",
                      flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--n_head", type=int, default=6)
    p.add_argument("--n_embd", type=int, default=384)
    p.add_argument("--vocab_size", type=int, default=8192)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps per contestant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="precision of the same-precision comparison (auto: bf16 on GPUs and on CPUs with native "
                        "bf16, fp32 elsewhere)")
    p.add_argument("--compile", default="off", choices=["on", "off"],
                   help="lmforge with train.compile in the same-precision comparison")
    p.add_argument("--device", default="auto")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--grad_clip", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no_extras", action="store_true", help="only the same-precision comparison")
    p.add_argument("--max_other_cpu", type=float, default=0.3,
                   help="re-measure a CPU step while other processes used more cores than this")
    p.add_argument("--retries", type=int, default=3, help="re-measurements allowed per step")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="the GPU's dense bf16 peak, for MFU (default: known for H100/H200/A100, else no MFU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="print every step")
    args = p.parse_args()

    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = args.precision
    if precision == "auto":
        # The faster precision the hardware does natively, with the same validation loss (see precision.py).
        precision = "bf16" if device.type == "cpu" and cpu_has_native_bf16() else resolve_precision("auto", device)
    precision = resolve_precision(precision, device)
    compile_main = args.compile == "on"
    # The trainer writes nothing unless asked to save; it still wants a run directory.
    scratch = tempfile.TemporaryDirectory(prefix="lmforge-bench-")
    run_dir = Path(scratch.name)
    ours = lmforge_contestant(args, precision, compile_main, device, run_dir)
    theirs = transformers_contestant(args, precision, device)
    contestants = [ours, theirs]
    extras: list[Contestant] = []
    if not args.no_extras:
        # The other precision for both, and lmforge with compilation switched the other way.
        other = "fp32" if precision != "fp32" else ("bf16" if device.type == "cpu" or torch.cuda.is_bf16_supported()
                                                     else "fp16")
        extras = [lmforge_contestant(args, other, compile_main, device, run_dir),
                  transformers_contestant(args, other, device),
                  lmforge_contestant(args, precision, not compile_main, device, run_dir),
                  lmforge_contestant(args, other, not compile_main, device, run_dir)]
    contestants += extras
    try:
        measure(contestants, args, device)
    finally:
        scratch.cleanup()

    tokens = args.batch_size * args.seq_len
    ours_tps, theirs_tps = ours.tokens_per_second(tokens), theirs.tokens_per_second(tokens)
    result = {
        "benchmark": "train_throughput",
        "device": device.type,
        "ours": round(ours_tps, 1),
        "baseline_name": f"transformers {transformers.__version__} GPT2LMHeadModel",
        "baseline": round(theirs_tps, 1),
        "unit": "tokens/s",
        "ratio": round(ours_tps / theirs_tps, 3),
        "precision": precision,
        "ours_compiled": compile_main,
        "ours_step_ms": round(1000 * statistics.median(ours.times), 1),
        "baseline_step_ms": round(1000 * statistics.median(theirs.times), 1),
    }
    if extras:
        speed = {c.name: c.tokens_per_second(tokens) for c in contestants}
        result["tokens_per_second"] = {k: round(v, 1) for k, v in speed.items()}
        result["ratio_same_precision"] = {
            prec: round(speed[f"lmforge {prec}{' compiled' if compile_main else ''}"] / speed[f"transformers {prec}"], 3)
            for prec in (precision, other)}
        best = max((c.name for c in contestants if c.name.startswith("lmforge")), key=speed.get)
        result["ours_best"] = best
        for name in speed:
            if name.startswith("transformers"):
                result[f"ratio_ours_best_vs_{name.replace(' ', '_')}"] = round(speed[best] / speed[name], 3)
        result["first_step_seconds"] = {c.name: round(c.first_step_seconds, 2) for c in contestants}
    peak = args.peak_tflops or (gpu_peak_bf16_tflops(torch.cuda.get_device_name(device))
                                if device.type == "cuda" else None)
    if peak:
        # Model FLOPs utilisation: the matmul FLOPs a step needs (PaLM's count, as flops_per_token) per
        # second, over the GPU's dense bf16 peak.
        per_token = flops_per_token(GPTConfig(vocab_size=args.vocab_size, block_size=args.seq_len, n_layer=args.n_layer,
                                              n_head=args.n_head, n_embd=args.n_embd), args.seq_len)
        result["peak_tflops"] = peak
        result["mfu"] = round(per_token * ours_tps / (peak * 1e12), 4)
        result["baseline_mfu"] = round(per_token * theirs_tps / (peak * 1e12), 4)
    result.update({
        "config": {"n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd, "vocab_size": args.vocab_size,
                   "seq_len": args.seq_len, "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
                   "optimizer": f"torch.optim.AdamW(lr={args.lr}, betas=(0.9, 0.95), weight_decay={args.weight_decay}"
                                f"{', fused=True' if device.type in ('cpu', 'cuda') else ''}), clip {args.grad_clip}",
                   "threads": torch.get_num_threads(), "torch": torch.__version__},
        "remeasured_steps": sum(c.remeasured for c in contestants),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    })
    print(json.dumps(result))


if __name__ == "__main__":
    main()

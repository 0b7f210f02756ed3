"""Before a run: what training a decoder preset on N GPUs needs, from its shape alone (built on the meta device).

Memory per GPU is the peak of one optimizer step, split into what is held at that moment:

    weights            parameters as the optimizer sees them: fp32 (the master copy under bf16); sharded by FSDP
    gradients          fp32; all of them while micro-batches accumulate, else none at the activations' peak
                       (each layer's gradients replace its activations as backward runs)
    optimizer_states   AdamW's two fp32 moments (sharded by FSDP)
    activations        what autograd saves for backward (`lmforge.train.saved_memory`)
    buffers            bf16 weight copies (autocast, or FSDP's gathered blocks), DDP's gradient buckets, and the
                       largest transient: the fused output layer's buffers, or one block's activation gradients

The peak is whichever is larger: the turn from forward to backward (activations whole) or the optimizer
step (every gradient). GB means 2**30 bytes, as nvidia-smi and torch.cuda report memory.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from lmforge.errors import ConfigError
from lmforge.models.gpt import count_parameters, flops_per_token
from lmforge.models.heads import block_lists
from lmforge.models.registry import build_model, preset_config, traits_of
from lmforge.train.saved_memory import (CHECKPOINTING, FP32, DecoderShape, activation_bytes,
                                        backward_working_bytes, recompute_bytes)

GB = float(1 << 30)


@dataclass(frozen=True)
class Accelerator:
    name: str
    memory_gb: float | None
    peak_tflops: dict  # precision -> dense peak; fp32 is the CUDA-core rate (PyTorch leaves TF32 off)


ACCELERATORS = {
    "h100": Accelerator("NVIDIA H100 SXM", 80.0, {"bf16": 989.4, "fp32": 66.9}),
    "h200": Accelerator("NVIDIA H200 SXM", 141.0, {"bf16": 989.4, "fp32": 66.9}),
    "a100": Accelerator("NVIDIA A100 SXM", 80.0, {"bf16": 312.0, "fp32": 19.5}),
    "cpu": Accelerator("CPU", None, {}),
}
# Memory a GPU cannot give tensors: the CUDA context, cuBLAS/NCCL workspaces, allocator fragmentation.
GPU_RESERVE_GB, GPU_RESERVE_FRACTION = 2.0, 0.05
FULL_RECOMPUTE_COST = 4 / 3  # full checkpointing runs each block's forward twice: 8N instead of 6N FLOPs


@dataclass(frozen=True)
class PlanRequest:
    model: str
    gpus: int = 1
    gpu: str = "h100"
    gpu_memory: float | None = None        # GB per GPU; None: the accelerator's
    seq_len: int | None = None             # None: the preset's context length
    micro_batch: int = 1
    global_batch_tokens: int | None = None  # None: one micro-batch per GPU per step
    tokens: float | None = None            # None: 20 tokens per parameter (Chinchilla)
    precision: str | None = None           # None: bf16 on GPUs, fp32 on CPU
    parallel: str = "ddp"
    activation_checkpointing: str = "none"
    mfu: float = 0.4
    peak_tflops: float | None = None       # None: the accelerator's for the precision
    reshard_after_forward: bool = True

    def checked(self) -> "PlanRequest":
        for name in ("gpus", "micro_batch", "seq_len", "global_batch_tokens", "tokens", "gpu_memory", "peak_tflops"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--{name} must be positive, got {value}", f"pass a positive --{name}")
        choices = {"gpu": tuple(ACCELERATORS), "precision": (None, "bf16", "fp32"), "parallel": ("ddp", "fsdp"),
                   "activation_checkpointing": CHECKPOINTING}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                shown = ", ".join(a for a in allowed if a)
                raise ConfigError(f"--{name} must be one of {shown}, got {getattr(self, name)!r}",
                                  f"pass --{name} {allowed[-1]}")
        if not 0 < self.mfu <= 1:
            raise ConfigError(f"--mfu must be in (0, 1], got {self.mfu}", "pass e.g. --mfu 0.4")
        if self.gpu == "cpu" and self.gpu_memory is None:
            raise ConfigError("--gpu cpu has no fixed memory size", "pass --gpu_memory GB (the RAM to plan for)")
        return self


@dataclass(frozen=True)
class ModelSizes:
    shape: DecoderShape
    parameters: int
    block_parameters: int   # one transformer block
    head_parameters: int    # the output layer's matrix (vocab x width; the embedding's when tied)

    @property
    def root_parameters(self) -> int:
        """Parameters outside the blocks (embeddings, final norm, output layer): FSDP's root unit."""
        return self.parameters - self.shape.n_layer * self.block_parameters


def model_sizes(preset: str, seq_len: int | None = None) -> tuple[ModelSizes, object]:
    """Parameter counts of `preset` (built on the meta device) and its config."""
    cfg = preset_config(preset)
    traits = traits_of(cfg)
    if traits.structure != "decoder" or not traits.kv_cache:
        raise ConfigError(f"lmforge plan estimates transformer decoders; {preset!r} is a {cfg.display_name} model",
                          "pass a GPT or Llama preset (see `lmforge presets`)")
    if seq_len is not None and seq_len > cfg.block_size:
        raise ConfigError(f"--seq_len {seq_len} is longer than {preset}'s context ({cfg.block_size})",
                          f"pass --seq_len {cfg.block_size} or less")
    model = build_model(cfg, device="meta")
    block = block_lists(model)[0][0]
    head = cfg.vocab_size * cfg.n_embd
    return ModelSizes(DecoderShape.of(cfg), count_parameters(model), count_parameters(block), head), cfg


@dataclass(frozen=True)
class Memory:
    weights: float
    gradients: float
    optimizer_states: float
    activations: float
    buffers: float
    peak_phase: str

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer_states + self.activations + self.buffers


def memory_per_rank(sizes: ModelSizes, req: PlanRequest, micro_batch: int, grad_accum: int) -> Memory:
    """Peak bytes on one rank during a training step (see the module docstring for the parts)."""
    s, P = sizes.shape, sizes.parameters
    compute = 2 if req.precision == "bf16" else FP32
    fsdp = req.parallel == "fsdp"
    shards = req.gpus if fsdp else 1
    residual = compute if fsdp else FP32  # FSDP casts the parameters, so the residual stream is bf16 too
    tokens = micro_batch * req.seq_len
    weights, moments, all_grads = FP32 * P / shards, 2 * FP32 * P / shards, FP32 * P / shards
    modes = dict(compute=compute, residual=residual, checkpointing=req.activation_checkpointing)
    activations = activation_bytes(s, tokens, req.seq_len, **modes)
    # Beyond the saved activations, the largest of three moments: the end of forward (the fused output
    # layer's saved input and weight gradients, plus its chunk buffers), its backward (each gradient scaled
    # into a new tensor), and the last block's backward (the output layer's weight gradient, the rest of
    # the block rebuilt when checkpointed, and the block's activation gradients).
    head_grad = FP32 * sizes.head_parameters
    loss_saved = tokens * s.n_embd * compute + head_grad
    moments_after_forward = {
        "forward end": (0, loss_saved + _logit_chunk_bytes(s, tokens, req.gpu, compute)),
        "output layer backward": (0, 2 * loss_saved),
        "last block backward": (recompute_bytes(s, tokens, **modes),
                                head_grad + backward_working_bytes(s, tokens, compute)),
    }
    phase, (rebuilt, transient) = max(moments_after_forward.items(), key=lambda kv: sum(kv[1]))
    if fsdp:
        blocks_live = 2 if req.reshard_after_forward else s.n_layer  # the running block and the prefetched one
        gathered = compute * (sizes.root_parameters + blocks_live * sizes.block_parameters)
        wrapper = gathered + (sizes.block_parameters * (compute + FP32) if req.gpus > 1 else 0)  # reduce input
    else:
        autocast_copies = 2 * P if compute == 2 else 0  # bf16 casts of every weight, saved for backward
        wrapper = autocast_copies + (FP32 * P if req.gpus > 1 else 0)  # DDP's gradient buckets
    held_grads = all_grads if grad_accum > 1 else 0.0
    backward = Memory(weights, held_grads, moments, activations + rebuilt, transient + wrapper, phase)
    buckets = FP32 * P if req.gpus > 1 and not fsdp else 0
    if backward.total >= weights + moments + all_grads + buckets:
        return backward
    return Memory(weights, all_grads, moments, 0.0, buckets, "optimizer step")


def _logit_chunk_bytes(s: DecoderShape, tokens: int, gpu: str, compute: int) -> int:
    """The fused cross-entropy's forward buffers: a chunk of logits, their fp32 copy and log-softmax, and under
    bf16 the casts of its input and weight and (when they fit its budget) every logit gradient."""
    chunk = (1 << 21) if gpu == "cpu" else (1 << 27)
    rows = min(max(1, chunk // s.vocab_size), tokens)
    buffers = rows * s.vocab_size * (compute + FP32 + (FP32 if compute != FP32 else 0))
    if compute != FP32:
        buffers += compute * s.n_embd * (tokens + s.vocab_size)
        kept = tokens * s.vocab_size * compute
        buffers += kept if kept <= (512 << 20) else 0
    return buffers


def usable_gb(req: PlanRequest) -> float:
    memory = req.gpu_memory
    if req.gpu == "cpu":
        return memory
    return memory * (1 - GPU_RESERVE_FRACTION) - GPU_RESERVE_GB


def grad_accum_for(req: PlanRequest, micro_batch: int) -> int:
    per_step = micro_batch * req.seq_len * req.gpus
    return max(1, math.ceil((req.global_batch_tokens or per_step) / per_step))


def max_micro_batch(sizes: ModelSizes, req: PlanRequest, limit: int = 4096) -> int:
    """Largest micro-batch whose peak fits (0 when not even one sequence does)."""
    budget = usable_gb(req) * GB

    def fits(b: int) -> bool:
        return memory_per_rank(sizes, req, b, grad_accum_for(req, b)).total <= budget

    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def resolve(req: PlanRequest) -> tuple[PlanRequest, ModelSizes, object]:
    """`req` checked, with every default filled in, and the model's sizes."""
    req = req.checked()
    sizes, cfg = model_sizes(req.model, req.seq_len)
    accelerator = ACCELERATORS[req.gpu]
    precision = req.precision or ("fp32" if req.gpu == "cpu" else "bf16")
    req = replace(req, seq_len=req.seq_len or cfg.block_size, precision=precision,
                  gpu_memory=req.gpu_memory or accelerator.memory_gb,
                  peak_tflops=req.peak_tflops or accelerator.peak_tflops.get(precision),
                  tokens=req.tokens or 20.0 * sizes.parameters)
    return req, sizes, cfg


def plan(req: PlanRequest) -> dict:
    """The plan as one JSON-ready dict (see `lmforge plan --help` for the fields)."""
    req, sizes, cfg = resolve(req)
    grad_accum = grad_accum_for(req, req.micro_batch)
    memory = memory_per_rank(sizes, req, req.micro_batch, grad_accum)
    flops = flops_per_token(cfg, req.seq_len)
    throughput = _throughput(req, flops)
    best = max_micro_batch(sizes, req)
    fits = memory.total <= usable_gb(req) * GB
    parts = {k: round(v / GB, 3) for k, v in asdict(memory).items() if k != "peak_phase"}
    result = {
        "model": req.model, "parameters": sizes.parameters, "flops_per_token": flops,
        "gpus": req.gpus, "gpu": ACCELERATORS[req.gpu].name, "gpu_memory_gb": req.gpu_memory,
        "usable_memory_gb": round(usable_gb(req), 2), "precision": req.precision, "parallel": req.parallel,
        "activation_checkpointing": req.activation_checkpointing, "seq_len": req.seq_len,
        "micro_batch": req.micro_batch, "grad_accum": grad_accum,
        "global_batch_tokens": req.micro_batch * req.seq_len * req.gpus * grad_accum,
        "memory_per_gpu_gb": {**parts, "total": round(memory.total / GB, 3)}, "peak_phase": memory.peak_phase,
        "fits": fits, "max_micro_batch": best, "tokens": req.tokens, "mfu": req.mfu,
        "peak_tflops": req.peak_tflops, **throughput,
    }
    result["verdict"], result["suggestions"] = _verdict(req, sizes, memory, fits, best)
    return result


def _throughput(req: PlanRequest, flops: float) -> dict:
    if req.peak_tflops is None:
        return {"tokens_per_second": None, "wall_hours": None, "gpu_hours": None}
    recompute = FULL_RECOMPUTE_COST if req.activation_checkpointing == "full" else 1.0
    tokens_per_second = req.mfu * req.peak_tflops * 1e12 * req.gpus / (flops * recompute)
    wall = req.tokens / tokens_per_second / 3600
    return {"tokens_per_second": round(tokens_per_second, 1), "wall_hours": round(wall, 2),
            "gpu_hours": round(wall * req.gpus, 1)}


def _verdict(req: PlanRequest, sizes: ModelSizes, memory: Memory, fits: bool, best: int) -> tuple[str, list[str]]:
    usable = usable_gb(req)
    if fits:
        return (f"fits: {memory.total / GB:.1f} of {usable:.1f} GB usable per GPU; micro-batches up to {best} "
                f"fit"), []
    options = []
    if best:
        options.append(f"--micro_batch {best}")
    for change, flag in ((dict(parallel="fsdp"), "--parallel fsdp"),
                         (dict(activation_checkpointing="full"), "--activation_checkpointing full"),
                         (dict(parallel="fsdp", activation_checkpointing="full"),
                          "--parallel fsdp --activation_checkpointing full")):
        if all(getattr(req, k) == v for k, v in change.items()):
            continue
        alternative = replace(req, **change)
        if max_micro_batch(sizes, alternative) >= 1:
            options.append(flag)
    gpus = _fewest_gpus(sizes, replace(req, parallel="fsdp"))
    if gpus and gpus > req.gpus:
        options.append(f"--parallel fsdp --gpus {gpus}")
    return (f"does not fit: {memory.total / GB:.1f} GB per GPU needed, {usable:.1f} GB usable "
            f"(peak at {memory.peak_phase})"), options


def _fewest_gpus(sizes: ModelSizes, req: PlanRequest, limit: int = 4096) -> int | None:
    """Fewest GPUs over which FSDP fits one sequence per GPU, trying powers of two."""
    gpus = 1
    while gpus <= limit:
        if max_micro_batch(sizes, replace(req, gpus=gpus, micro_batch=1)) >= 1:
            return gpus
        gpus *= 2
    return None


def describe_plan(result: dict) -> str:
    """The plan as a table for the terminal."""
    mem = result["memory_per_gpu_gb"]
    shape = (f"{result['gpus']} x {result['gpu']} ({result['gpu_memory_gb']:g} GB, {result['usable_memory_gb']:g} "
             f"usable), {result['precision']}, {result['parallel']}, checkpointing {result['activation_checkpointing']}")
    rows = [
        ("model", f"{result['model']}: {result['parameters'] / 1e9:.3f}B parameters"),
        ("hardware", shape),
        ("batch", f"{result['micro_batch']} x {result['seq_len']} tokens per GPU, {result['grad_accum']} micro-batches "
                  f"per step: {result['global_batch_tokens']:,} tokens per step"),
        ("FLOPs per token", f"{result['flops_per_token']:.4g} (6N plus attention, forward + backward)"),
    ]
    rows += [(f"  {name.replace('_', ' ')}", f"{mem[name]:10.2f} GB")
             for name in ("weights", "gradients", "optimizer_states", "activations", "buffers")]
    rows += [("memory per GPU", f"{mem['total']:10.2f} GB at the peak ({result['peak_phase']})"),
             ("largest micro-batch", str(result["max_micro_batch"]))]
    if result["tokens_per_second"] is not None:
        rows += [("throughput", f"{result['tokens_per_second']:,.0f} tokens/s at MFU {result['mfu']:g} of "
                                f"{result['peak_tflops']:g} TFLOPS per GPU"),
                 ("time", f"{result['tokens']:.3g} tokens: {result['wall_hours']:,.1f} hours wall, "
                          f"{result['gpu_hours']:,.0f} GPU-hours")]
    rows.append(("verdict", result["verdict"]))
    rows += [("would fit with", option) for option in result["suggestions"]]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

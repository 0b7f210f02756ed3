"""How well a training run uses its hardware: model FLOPs utilisation (MFU, as PaLM's appendix B defines it)
against the detected GPU's dense peak, and peak memory. Logged with every training log line."""
from __future__ import annotations

import resource

import torch
import torch.nn as nn

from lmforge.models.gpt import flops_per_token
from lmforge.models.registry import traits_of
from lmforge.train.plan import ACCELERATORS, GB


def device_peak_tflops(device: torch.device, precision: str) -> float | None:
    """The dense peak of `device` at `precision` (bf16 or fp32) when it is a GPU lmforge knows, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    for key, accelerator in ACCELERATORS.items():
        if key != "cpu" and key in name:
            return accelerator.peak_tflops.get("bf16" if precision in ("bf16", "fp16") else "fp32")
    return None


def model_flops_per_token(model: nn.Module, seq_len: int) -> float | None:
    """Training FLOPs per token of a transformer decoder (6N plus the attention term); None for other families,
    whose FLOPs this formula does not describe."""
    traits = traits_of(model)
    if traits.structure != "decoder" or not traits.kv_cache:
        return None
    return flops_per_token(model.config, seq_len)


def mfu(tokens_per_second: float, flops: float | None, peak_tflops: float | None, world_size: int) -> float | None:
    """Model FLOPs (never the recomputed ones of activation checkpointing) per second over the ranks' peak."""
    if flops is None or peak_tflops is None:
        return None
    return tokens_per_second * flops / (peak_tflops * 1e12 * world_size)


def peak_memory_gb(device: torch.device) -> float:
    """The most memory this process has held: tensors on a GPU (`max_memory_allocated`), resident memory
    (peak RSS) on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB

"""Numeric precision: which dtype to compute in and the matching autocast context."""
from __future__ import annotations

import contextlib

import torch

from lmforge.errors import ConfigError


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` picks bf16 on GPUs that support it and fp32 elsewhere (bf16 autocast on CPU is
    available but not faster for the small models CPUs train, and costs accuracy)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 training needs a CUDA device", "use --train.precision bf16 or fp32 on CPU")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16", "use --train.precision fp16 or fp32")
    return name


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device):
    """fp16 needs loss scaling to keep small gradients from underflowing; bf16 and fp32 do not."""
    enabled = precision == "fp16"
    return torch.amp.GradScaler(device.type, enabled=enabled)

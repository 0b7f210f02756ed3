"""Numeric precision: which dtype to compute in and the matching autocast context."""
from __future__ import annotations

import contextlib
import sys

import torch

from lmforge.device import cpu_has_native_bf16
from lmforge.errors import ConfigError

__all__ = ["resolve_precision", "cpu_has_native_bf16", "autocast", "grad_scaler"]


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` picks bf16 on GPUs that support it and fp32 elsewhere.

    On CPUs with native bf16 instructions (see `cpu_has_native_bf16`) bf16 autocast trains GPT models
    1.2-2x faster than fp32 and reaches the same validation loss, so recipes for such machines ask for
    it explicitly; `auto` stays fp32 on CPU so that results do not depend on the processor. Without
    native support bf16 is emulated and slower than fp32.
    """
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 training needs a CUDA device", "use --train.precision bf16 or fp32 on CPU")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16", "use --train.precision fp16 or fp32")
    if name == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        print("warning: this CPU has no native bf16 (no AVX512-BF16 or AMX): bf16 is emulated and several times "
              "slower than fp32 here; pass --train.precision fp32", file=sys.stderr)
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

"""Device names a user passes (`auto`, `cpu`, `cuda`, `cuda:N`, `mps`) -> a `torch.device`, with one-line errors."""
from __future__ import annotations

import functools

import torch

from lmforge.errors import ConfigError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` is the GPU of this process's local rank when CUDA is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available",
                          "use cpu or auto (--train.device when training, --device otherwise)")
    if name not in ("cpu",) and not name.startswith(("cuda", "mps")):
        raise ConfigError(f"unknown device {name!r}", "use auto, cpu or cuda")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where bf16 matmuls run at about twice
    the fp32 rate. Elsewhere (AVX2-only CPUs) PyTorch emulates bf16 and a bf16 matmul is 10x slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu probes
    try:
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    except RuntimeError:
        return False

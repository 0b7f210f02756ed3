"""What this CPU multiplies fast, for the quantized layers to pick their kernels by.

bfloat16 matrix products are fast only where the CPU has native bfloat16 instructions (AVX-512 BF16 or
AMX): there a bfloat16 matmul over a converted int8/int4 weight runs 2-4x faster than fp32. Without them
(AVX2-only CPUs, e.g. many AMD EPYC and older Xeons) PyTorch emulates bfloat16 and the same matmul is
10-15x slower than fp32 at 128 rows (measured on a 2-core AVX2 EPYC, torch 2.13), so the layers stay in fp32.
fbgemm's int8 x int8 kernels (dynamic quantization) are fast on both.
"""
from __future__ import annotations

import functools

import torch


@functools.cache
def fast_bfloat16() -> bool:
    """True when this CPU has native bfloat16 matrix instructions (AVX-512 BF16 or AMX)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu probes, present since 2.3
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


@functools.cache
def fbgemm_available() -> bool:
    """True when PyTorch's fbgemm int8 kernels (x86) can run here."""
    return "fbgemm" in torch.backends.quantized.supported_engines

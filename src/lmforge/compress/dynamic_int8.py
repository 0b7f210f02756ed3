"""Dynamic int8: int8 weights (per output channel, stored as for weight-only int8) times activations quantized
to int8 on every call, one scale per call, summed in int32 by fbgemm's kernels.

    y = (x_int8 (M, K) @ weight_int8.T (K, N)) * x_scale * scales (N,) + bias,   x_scale = range(x) / 255

Encoders classify whole sequences (128 rows and more): there fbgemm's int8 product runs 1.8-2.9x faster
than fp32, and at one row (decoding) 1.2-3x (measured on a 2-core AVX2 EPYC at 1 thread, MiniLM and
GPT-2 shapes). The activations lose precision the weights alone would not, so check the task metric
(`lmforge compress report`). The kernel's packed weight is built from the stored int8 weight when the
layer is made or loaded, never saved. Activations are rounded to 7 bits (fbgemm's `reduce_range`),
which keeps the 16-bit pair sums of AVX2 CPUs without VNNI from saturating. Where fbgemm is absent (not
x86), off the CPU, and in a PyTorch that has dropped quantized tensors (deprecated since 2.13; fbgemm's
kernels take their weight in that form), the layer computes as the weight-only int8 layer does.
"""
from __future__ import annotations

import warnings

import torch

from lmforge.compress.int8 import Int8Linear

# Activations take 7 bits of the 8: products of pairs then fit the 16-bit sums of AVX2 kernels.
REDUCE_RANGE = True


def fbgemm_available() -> bool:
    """True when PyTorch's fbgemm int8 kernels (x86) can run here."""
    return "fbgemm" in torch.backends.quantized.supported_engines


class DynamicInt8Linear(Int8Linear):
    """Int8Linear whose CPU forward pass also quantizes its input, through fbgemm's dynamic linear kernel."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.packed = None  # fbgemm's packed weight, made by refresh_kernel_scales (after a load as well)

    def refresh_kernel_scales(self) -> None:
        super().refresh_kernel_scales()
        if not fbgemm_available() or self.weight_int8.device.type != "cpu":
            self.packed = None
            return
        bias = None if self.bias is None else self.bias.detach().float()
        with warnings.catch_warnings():  # quantized tensors are deprecated (torch 2.13): the docstring says so
            warnings.simplefilter("ignore", UserWarning)
            try:
                quantized = torch._make_per_channel_quantized_tensor(
                    self.weight_int8, self.scales.detach().double(), torch.zeros(self.out_features, dtype=torch.long),
                    0)
                self.packed = torch.ops.quantized.linear_prepack(quantized, bias)
            except (AttributeError, RuntimeError, NotImplementedError):  # a PyTorch without them
                self.packed = None

    def _apply(self, fn, recurse=True):
        # Moving or casting the layer (`.to(device)`) leaves a packed weight behind: make it again.
        out = super()._apply(fn, recurse)
        self.refresh_kernel_scales()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., K) -> (..., N)."""
        if self.packed is None or x.device.type != "cpu":
            return super().forward(x)
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, self.in_features).float().contiguous(), self.packed,
                                               REDUCE_RANGE)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

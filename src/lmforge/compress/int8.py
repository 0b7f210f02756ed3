"""Weight-only int8: each `nn.Linear` weight stored as int8 with one scale per output channel.

    weight (N, K) ≈ weight_int8 (N, K) * scales (N, 1),   scales = max |weight row| / 127   (symmetric)

Activations stay floating point. Batch-1 decoding reads every weight matrix once per token, so a
quarter of the bytes is most of the speed-up. On CPU the product is computed in bfloat16, as
(x (M, K) @ weight_int8.T) * scales, the int8 values being exact in bfloat16:
- for a few rows (decoding) in PyTorch's packed kernel `aten._weight_int8pack_mm`, 2.5-3x faster
  than an fp32 matrix-vector product on AVX-512 BF16 / AMX CPUs, where the input width is a multiple
  of 16 (the kernel's requirement). With fp32 activations the same kernel
  runs several times slower than an fp32 matmul, hence the bfloat16 rounding of the activations;
- for many rows (a prompt, a perplexity window, a batch to classify) the kernel is slower than a plain
  matmul, so the int8 weight is converted to bfloat16 and multiplied with `F.linear`, which is then
  2-4x faster than fp32 (measured on a Xeon with AMX; see benchmarks/quantize.py). On CPUs without
  native bfloat16 that matmul is 10x slower than fp32, so there the weight is converted to fp32.
The result is cast back to the activations' dtype. On other devices the weight is dequantized and
multiplied in the activations' dtype, which saves memory but not time.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.device import cpu_has_native_bf16

# The packed kernel's fast path: activations and scales in this dtype (float16 also runs, unless given).
KERNEL_DTYPE = torch.bfloat16
# Above this many rows a bfloat16 matmul over the converted weight beats the packed kernel (measured crossover
# 8-32 rows on a 2-core Xeon, for 768 x 2304 to 768 x 50257 weights).
PACKED_KERNEL_MAX_ROWS = 16
# The packed kernel's input width must be a multiple of this: on torch 2.13 other widths (33, 40, 100, 772...)
# give wrong sums or crash. Other layers take the bfloat16 matmul.
PACKED_KERNEL_K_MULTIPLE = 16
_KERNEL_DEVICES = ("cpu",)
_HALF_DTYPES = (torch.bfloat16, torch.float16)


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight (N, K), fp32 scales (N,)) for a float weight (N, K): symmetric, one scale per row,
    values in [-127, 127] so that +x and -x stay exact negatives."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # an all-zero row keeps zeros, not NaNs
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def dequantize(weight_int8: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float weight (N, K) that int8 `weight_int8` (N, K) and `scales` (N,) stand for."""
    return weight_int8.to(scales.dtype) * scales[:, None]


def int8_matmul(x2d: torch.Tensor, weight_int8: torch.Tensor, kernel_scales: torch.Tensor) -> torch.Tensor:
    """x2d (M, K) @ dequantized weight.T -> (M, N) in x2d's dtype, computed in half precision (CPU), or for
    many fp32 rows on a CPU without native bfloat16 in fp32 (see lmforge.device.cpu_has_native_bf16).

    `kernel_scales` (N,) are in the compute dtype: x2d's own when it is half precision, else bfloat16."""
    packed = x2d.shape[0] <= PACKED_KERNEL_MAX_ROWS and x2d.shape[1] % PACKED_KERNEL_K_MULTIPLE == 0
    if not packed and x2d.dtype == torch.float32 and not cpu_has_native_bf16():
        return F.linear(x2d, weight_int8.to(torch.float32)) * kernel_scales.to(torch.float32)
    compute = x2d.dtype if x2d.dtype in _HALF_DTYPES else KERNEL_DTYPE
    scales = kernel_scales if kernel_scales.dtype == compute else kernel_scales.to(compute)
    x = x2d.to(compute).contiguous()
    if packed:
        y = torch.ops.aten._weight_int8pack_mm(x, weight_int8, scales)
    else:
        y = F.linear(x, weight_int8.to(compute)) * scales
    return y.to(x2d.dtype)


class Int8Linear(nn.Module):
    """A drop-in `nn.Linear` holding `weight_int8` (N, K) int8 and `scales` (N,), plus the float bias.

    `weight` gives the dequantized float weight, for code that reads a linear layer's weight
    directly (a fused loss over the output layer); the forward pass never builds it on CPU.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=dtype, device=device))
        # The kernel wants scales in the activations' dtype; kept beside the exact ones, refreshed on load.
        self.register_buffer("kernel_scales", self.scales.to(KERNEL_DTYPE), persistent=False)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)
        self.register_load_state_dict_post_hook(_refresh_kernel_scales)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        """The int8 version of `linear`, on its device, its bias and scales in its dtype."""
        w = linear.weight
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=w.device,
                     dtype=w.dtype)
        q, scales = quantize_per_channel(w)
        with torch.no_grad():
            module.weight_int8.copy_(q)
            module.scales.copy_(scales)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        module.refresh_kernel_scales()
        return module.train(linear.training)

    def refresh_kernel_scales(self) -> None:
        kernel_dtype = self.scales.dtype if self.scales.dtype in _HALF_DTYPES else KERNEL_DTYPE
        self.kernel_scales = self.scales.detach().to(kernel_dtype)

    @property
    def weight(self) -> torch.Tensor:
        return dequantize(self.weight_int8, self.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., K) -> (..., N)."""
        if x.device.type not in _KERNEL_DEVICES:
            return F.linear(x, self.weight.to(x.dtype), self.bias)
        y = int8_matmul(x.reshape(-1, self.in_features), self.weight_int8, self.kernel_scales)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _refresh_kernel_scales(module: Int8Linear, incompatible_keys) -> None:
    module.refresh_kernel_scales()

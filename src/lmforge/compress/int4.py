"""Weight-only int4, group-wise: each `nn.Linear` weight stored as 4-bit values with a scale and a zero point
per output row and group of `group_size` input columns (asymmetric, the form PyTorch's CPU kernel takes).

    weight[n, k] ≈ (q[n, k] - 8) * scales[n, g] + zeros[n, g],   g = k // group_size,   q in 0..15
    scales = (max - min) / 15 over the group,   zeros = min + 8 * scales

Stored portably: `weight_int4` (N, K/2) uint8, two values a byte (column 2j in the low nibble, 2j+1 in the
high one), plus `scales` and `zeros` (N, K / group_size). The CPU kernel's own packed layout differs and
may change between PyTorch versions, so it is built from the portable form when the layer is made or loaded
and never saved. A calibrated layer also holds `input_scales` (K,): its weight was quantized as
weight * input_scales (columns that see large activations keep more precision), and the layer divides its
input by them, so it computes the same function apart from rounding.

On CPU the product is computed in bfloat16 (with fp32 activations PyTorch's kernel runs 20-70x slower):
- for a few rows (decoding) in `aten._weight_int4pack_mm_for_cpu`, which needs the output width padded to
  a multiple of 16 (done in the kernel copy, the padding sliced off) and a group size of 32, 64, 128 or 256;
- for many rows the weight is dequantized to bfloat16 and multiplied with `F.linear`, which is faster there
  (in fp32 on CPUs without native bfloat16, where a bfloat16 matmul is 10x slower: see lmforge.device.cpu_has_native_bf16).
On other devices the weight is dequantized and multiplied in the activations' dtype.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.device import cpu_has_native_bf16

# The group sizes PyTorch's CPU int4 kernel accepts (torch 2.13).
GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 128
KERNEL_DTYPE = torch.bfloat16
# Above this many rows a bfloat16 matmul over the dequantized weight beats the packed kernel (measured on a Xeon
# with AMX at 1 thread, 768 x 2304 to 3072 x 768 weights: the kernel takes 0.13-0.28 ms at 1 row, 0.9-1.9 ms at
# 16 and 3.3-5.2 ms at 64, a bfloat16 matmul 0.3-0.7 ms at 1 to 64 rows).
PACKED_KERNEL_MAX_ROWS = 16
# The kernel's packing needs the output width to be a multiple of this; narrower layers are padded with zero rows.
KERNEL_N_MULTIPLE = 16
# The kernel's stored values are offset by this: value q stands for (q - 8) * scale + zero.
_MIDPOINT = 8
_KERNEL_DEVICES = ("cpu",)


def quantize_groups(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values (N, K) uint8 in 0..15, scales (N, G) fp32, zeros (N, G) fp32) for a float weight (N, K),
    G = K / group_size: asymmetric, the group's minimum and maximum map to 0 and 15."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // group_size, group_size)  # (N, G, group_size)
    low, high = w.amin(dim=2), w.amax(dim=2)
    scales = ((high - low) / 15.0).clamp(min=1e-10)  # a constant group keeps its value, not NaNs
    q = torch.round((w - low[..., None]) / scales[..., None]).clamp(0, 15).to(torch.uint8)
    return q.reshape(n, k), scales, low + _MIDPOINT * scales


def dequantize_groups(values: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """The float weight (N, K) that `values` (N, K) in 0..15 and `scales`, `zeros` (N, G) stand for, in the
    scales' dtype."""
    n, k = values.shape
    groups = scales.shape[1]
    q = values.reshape(n, groups, k // groups).to(scales.dtype) - _MIDPOINT
    return (q * scales[..., None] + zeros[..., None]).reshape(n, k)


def pack_nibbles(values: torch.Tensor) -> torch.Tensor:
    """(N, K) values in 0..15 -> (N, K/2) uint8: column 2j in the low nibble, 2j+1 in the high one."""
    v = values.to(torch.uint8)
    return v[:, 0::2] | (v[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(N, K/2) uint8 -> (N, K) uint8 values in 0..15 (the inverse of `pack_nibbles`)."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def kernel_operands(values: torch.Tensor, scales: torch.Tensor,
                    zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPU kernel's (packed weight, scales_and_zeros (G, N', 2) bfloat16) for `values` (N, K), N' being
    N rounded up to a multiple of 16 with zero rows."""
    n = values.shape[0]
    pad = -n % KERNEL_N_MULTIPLE
    if pad:
        values = F.pad(values, (0, 0, 0, pad), value=_MIDPOINT)
        scales, zeros = F.pad(scales, (0, 0, 0, pad)), F.pad(zeros, (0, 0, 0, pad))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(values.to(torch.int32).contiguous(), 1)
    scales_and_zeros = torch.stack([scales, zeros], dim=-1).transpose(0, 1).to(KERNEL_DTYPE).contiguous()
    return packed, scales_and_zeros


def int4_matmul(x2d: torch.Tensor, layer: "Int4Linear") -> torch.Tensor:
    """x2d (M, K) @ the layer's dequantized weight.T -> (M, N) in x2d's dtype, computed in bfloat16 (CPU)."""
    if x2d.shape[0] > PACKED_KERNEL_MAX_ROWS and x2d.dtype == torch.float32 and not cpu_has_native_bf16():
        return F.linear(x2d, dequantize_groups(unpack_nibbles(layer.weight_int4), layer.scales, layer.zeros))
    x = x2d.to(KERNEL_DTYPE).contiguous()
    if x.shape[0] <= PACKED_KERNEL_MAX_ROWS:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, layer.kernel_weight, layer.group_size,
                                                       layer.kernel_scales_and_zeros)[:, :layer.out_features]
    else:
        values = unpack_nibbles(layer.weight_int4)
        y = F.linear(x, dequantize_groups(values, layer.scales.to(KERNEL_DTYPE), layer.zeros.to(KERNEL_DTYPE)))
    return y.to(x2d.dtype)


class Int4Linear(nn.Module):
    """A drop-in `nn.Linear` holding `weight_int4` (N, K/2) uint8, `scales` and `zeros` (N, K / group_size), the
    float bias and, when calibrated, `input_scales` (K,) that its input is divided by.

    `weight` gives the equivalent float weight, for code that reads a linear layer's weight directly (a fused
    loss over the output layer); the forward pass never builds it on CPU for a few rows.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group_size: int = DEFAULT_GROUP_SIZE,
                 calibrated: bool = False, device=None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("weight_int4", torch.full((out_features, in_features // 2), 0x88, dtype=torch.uint8,
                                                       device=device))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=dtype, device=device))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=dtype, device=device))
        self.register_buffer("input_scales", torch.ones(in_features, dtype=dtype, device=device) if calibrated
                             else None)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)
        # The kernel's own layout, rebuilt from the portable buffers when they change (made or loaded).
        self.register_buffer("kernel_weight", None, persistent=False)
        self.register_buffer("kernel_scales_and_zeros", None, persistent=False)
        self.register_load_state_dict_post_hook(_refresh_kernel_operands)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = DEFAULT_GROUP_SIZE,
                    input_scales: torch.Tensor | None = None) -> "Int4Linear":
        """The int4 version of `linear`; with `input_scales` (K,), of weight * input_scales (a calibrated layer)."""
        w = linear.weight
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, group_size=group_size,
                     calibrated=input_scales is not None, device=w.device, dtype=w.dtype)
        scaled = w.detach().float() if input_scales is None else w.detach().float() * input_scales.float()
        values, scales, zeros = quantize_groups(scaled, group_size)
        with torch.no_grad():
            module.weight_int4.copy_(pack_nibbles(values))
            module.scales.copy_(scales)
            module.zeros.copy_(zeros)
            if input_scales is not None:
                module.input_scales.copy_(input_scales)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        module.refresh_kernel_operands()
        return module.train(linear.training)

    def refresh_kernel_operands(self) -> None:
        if self.weight_int4.device.type in _KERNEL_DEVICES:
            self.kernel_weight, self.kernel_scales_and_zeros = kernel_operands(
                unpack_nibbles(self.weight_int4), self.scales.detach().float(), self.zeros.detach().float())

    @property
    def weight(self) -> torch.Tensor:
        w = dequantize_groups(unpack_nibbles(self.weight_int4), self.scales, self.zeros)
        return w if self.input_scales is None else w / self.input_scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., K) -> (..., N)."""
        if self.input_scales is not None:
            x = x / self.input_scales.to(x.dtype)
        if x.device.type not in _KERNEL_DEVICES or self.kernel_weight is None:
            w = dequantize_groups(unpack_nibbles(self.weight_int4), self.scales, self.zeros)
            return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        y = int4_matmul(x.reshape(-1, self.in_features), self).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"group_size={self.group_size}, calibrated={self.input_scales is not None}")


def _refresh_kernel_operands(module: Int4Linear, incompatible_keys) -> None:
    module.refresh_kernel_operands()

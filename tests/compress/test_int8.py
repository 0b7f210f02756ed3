"""Int8 weights and the int8 linear layer, each against a float reference computed independently:
the packed kernel and the many-row path vs dequantize-then-matmul in float64, the layer vs nn.Linear."""
import pytest
import torch
import torch.nn as nn

from lmforge.compress import int8 as int8_module
from lmforge.compress.int8 import PACKED_KERNEL_MAX_ROWS, Int8Linear, dequantize, int8_matmul, quantize_per_channel


def _reference(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x @ (q * scales).T in float64, from the bfloat16-rounded activations the kernel is given."""
    w = q.double() * scales.double()[:, None]
    return x.to(torch.bfloat16).double() @ w.T


def test_per_channel_quantization_is_symmetric_and_within_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(37, 53) * torch.logspace(-3, 1, 37)[:, None]  # rows of very different ranges
    w[5] = 0.0
    q, scales = quantize_per_channel(w)
    assert q.dtype == torch.int8 and scales.shape == (37,) and scales.dtype == torch.float32
    assert q.abs().max() <= 127 and (q.abs().amax(1)[torch.arange(37) != 5] == 127).all()
    assert (q[5] == 0).all() and torch.isfinite(scales).all()
    error = (dequantize(q, scales) - w).abs()
    assert (error <= scales[:, None] / 2 * (1 + 1e-6)).all()
    q_neg, scales_neg = quantize_per_channel(-w)
    assert torch.equal(q_neg, -q) and torch.equal(scales_neg, scales)


@pytest.mark.parametrize("rows", [1, 3, PACKED_KERNEL_MAX_ROWS, PACKED_KERNEL_MAX_ROWS + 1, 70])
@pytest.mark.parametrize("n, k", [(48, 64), (50, 96), (3, 32), (24, 40), (5, 100)])  # 40, 100: no packed kernel
def test_int8_matmul_matches_dequantize_then_matmul(rows, n, k):
    torch.manual_seed(rows * 1000 + n + k)
    q, scales = quantize_per_channel(torch.randn(n, k))
    scales = scales.to(torch.bfloat16).float()  # the scales the kernel multiplies by
    x = torch.randn(rows, k)
    y = int8_matmul(x, q, scales.to(torch.bfloat16))
    expected = _reference(x, q, scales)
    assert y.dtype == torch.float32 and y.shape == (rows, n)
    # The products are exact; what remains is bfloat16 rounding of the result (2^-8 relative) and the sum order.
    torch.testing.assert_close(y.double(), expected, rtol=2 ** -7, atol=2 ** -7 * expected.abs().max().item())


def test_bfloat16_activations_stay_bfloat16():
    torch.manual_seed(0)
    q, scales = quantize_per_channel(torch.randn(16, 32))
    x = torch.randn(2, 32, dtype=torch.bfloat16)
    y = int8_matmul(x, q, scales.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), _reference(x, q, scales.to(torch.bfloat16).float()), rtol=2 ** -7,
                               atol=0.05)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 48), (2, 5, 48), (3, 30, 48), (1, 1, 40)])
def test_int8_linear_is_a_drop_in_linear(bias, shape):
    torch.manual_seed(0)
    linear = nn.Linear(shape[-1], 24, bias=bias)
    with torch.no_grad():
        if bias:
            linear.bias.normal_()
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(shape)
    with torch.no_grad():
        y, exact = layer(x), linear(x)
    assert y.shape == exact.shape == (*shape[:-1], 24)
    # Each weight moves by at most half a step, each activation by its bfloat16 rounding (2^-9 relative), and the
    # result by its own rounding: together at most |x| . (step / 2 + 2^-8 |w|) + 2^-7 |y| per output.
    bound = x.abs() @ (layer.scales[:, None] / 2 + 2 ** -8 * linear.weight.abs()).T.detach() + 2 ** -7 * exact.abs() + 1e-5
    assert ((y - exact).abs() <= bound).all()
    torch.testing.assert_close(layer.weight, dequantize(layer.weight_int8, layer.scales))


def test_fallback_off_cpu_is_dequantize_then_matmul(monkeypatch):
    # Devices without the packed kernel multiply the dequantized weight in the activations' dtype.
    torch.manual_seed(0)
    layer = Int8Linear.from_linear(nn.Linear(32, 8))
    x = torch.randn(4, 32)
    monkeypatch.setattr(int8_module, "_KERNEL_DEVICES", ())
    with torch.no_grad():
        y = layer(x)
    expected = x.double() @ dequantize(layer.weight_int8, layer.scales).double().T + layer.bias.double()
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


def test_state_dict_holds_int8_weights_and_exact_scales_and_loading_refreshes_the_kernel_copy():
    torch.manual_seed(0)
    source = Int8Linear.from_linear(nn.Linear(16, 8))
    state = source.state_dict()
    assert set(state) == {"weight_int8", "scales", "bias"}
    assert state["weight_int8"].dtype == torch.int8 and state["scales"].dtype == torch.float32
    fresh = Int8Linear(16, 8)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.kernel_scales, source.scales.to(torch.bfloat16))
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), source(x))

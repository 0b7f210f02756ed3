"""Group-wise int4 weights, the int4 linear layer and its calibration, each against a float reference computed
independently: the packed kernel and the many-row path vs dequantize-then-matmul in float64."""
import pytest
import torch
import torch.nn as nn

from lmforge.compress import apply_quantization, linear_layers
from lmforge.compress.calibrate import InputStats, search_input_scales
from lmforge.compress.int4 import (PACKED_KERNEL_MAX_ROWS, Int4Linear, dequantize_groups, pack_nibbles,
                                   quantize_groups, unpack_nibbles)
from lmforge.errors import ConfigError
from lmforge.models.registry import build_model, load_model, preset_config, save_model


def test_group_quantization_is_within_half_a_step_and_nibbles_round_trip():
    torch.manual_seed(0)
    w = torch.randn(24, 128) * torch.logspace(-3, 1, 24)[:, None]
    w[3] = 0.5  # a constant row keeps its value
    values, scales, zeros = quantize_groups(w, 32)
    assert values.dtype == torch.uint8 and values.max() <= 15 and scales.shape == zeros.shape == (24, 4)
    error = (dequantize_groups(values, scales, zeros) - w).abs()
    assert (error <= scales.repeat_interleave(32, dim=1) / 2 * (1 + 1e-5) + 1e-7).all()
    assert torch.equal(unpack_nibbles(pack_nibbles(values)), values)
    packed = pack_nibbles(values)  # (24, 64): column 2j in the low nibble, 2j + 1 in the high one
    assert torch.equal(packed & 0x0F, values[:, 0::2]) and torch.equal(packed >> 4, values[:, 1::2])


@pytest.mark.parametrize("rows", [1, 5, PACKED_KERNEL_MAX_ROWS, PACKED_KERNEL_MAX_ROWS + 1, 40])
@pytest.mark.parametrize("n, k, group_size", [(32, 64, 32), (24, 128, 64), (50, 256, 128), (16, 512, 256)])
def test_int4_linear_matches_dequantize_then_matmul(rows, n, k, group_size):
    torch.manual_seed(rows * 1000 + n + k)
    linear = nn.Linear(k, n)
    layer = Int4Linear.from_linear(linear, group_size)
    x = torch.randn(rows, k)
    with torch.no_grad():
        y = layer(x)
    w = dequantize_groups(unpack_nibbles(layer.weight_int4), layer.scales, layer.zeros).double()
    expected = x.to(torch.bfloat16).double() @ w.T + linear.bias.double()
    assert y.dtype == torch.float32 and y.shape == (rows, n)
    # bfloat16 scales, zeros and result: a few 2^-8 relative of the largest output.
    torch.testing.assert_close(y.double(), expected, rtol=2 ** -6, atol=2 ** -6 * expected.abs().max().item())


def test_state_dict_is_portable_and_loading_rebuilds_the_kernel_copy():
    torch.manual_seed(0)
    source = Int4Linear.from_linear(nn.Linear(64, 20), 32, input_scales=torch.rand(64) + 0.5)
    state = source.state_dict()
    assert set(state) == {"weight_int4", "scales", "zeros", "input_scales", "bias"}
    assert state["weight_int4"].shape == (20, 32) and state["weight_int4"].dtype == torch.uint8
    fresh = Int4Linear(64, 20, group_size=32, calibrated=True)
    fresh.load_state_dict(state)
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), source(x))


def _outlier_layer_and_inputs() -> tuple[nn.Linear, torch.Tensor]:
    """A layer whose inputs have a few channels 50x larger than the rest (as LLM activations do)."""
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(256, 64, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(64, 256, generator=g) * 0.05)
    x = torch.randn(512, 256, generator=g)
    x[:, [3, 77, 150, 201]] *= 50.0
    return linear, x


def test_calibration_beats_plain_rounding_on_a_layer_with_large_input_channels():
    linear, x = _outlier_layer_and_inputs()
    stats = InputStats()
    stats.add(x)
    scales, alpha = search_input_scales(linear.weight, stats, 128)
    assert alpha > 0
    plain, calibrated = Int4Linear.from_linear(linear, 128), Int4Linear.from_linear(linear, 128, scales)
    held_out = x.flip(0) * (1 + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        exact = linear(held_out)
        errors = [(layer(held_out) - exact).pow(2).mean().item() for layer in (plain, calibrated)]
    assert errors[1] < 0.7 * errors[0], errors


def test_calibrated_gpt_saves_and_loads_bit_identically(tmp_path):
    torch.manual_seed(0)
    model = build_model(preset_config("debug", vocab_size=128)).eval()
    windows = torch.randint(0, 128, (3, 32), generator=torch.Generator().manual_seed(2))
    record = apply_quantization(model, "int4", group_size=32, calibration=windows)
    assert record["method"] == "int4" and record["group_size"] == 32 and record["calibrated"] is True
    assert not linear_layers(model) and isinstance(model.lm_head, Int4Linear)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    ids = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids)) and torch.equal(model(ids[:, :1]), loaded(ids[:, :1]))


def test_group_sizes_the_kernel_or_the_model_cannot_take_are_user_errors():
    model = build_model(preset_config("debug", vocab_size=128))  # widths 64 and 256
    with pytest.raises(ConfigError, match="--group_size 48 is not supported"):
        apply_quantization(model, "int4", group_size=48)
    with pytest.raises(ConfigError, match="pass --group_size 32 or 64"):
        apply_quantization(model, "int4", group_size=128)
    with pytest.raises(ConfigError, match="do not apply to --method int8"):
        apply_quantization(model, "int8", group_size=64)
    assert linear_layers(model)  # nothing was replaced

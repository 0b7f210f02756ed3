"""Dynamic int8 against independent references: the layer's output is within the bound that rounding its
input to 7-bit steps allows around the exact product with the dequantized weight; without fbgemm it computes
exactly what the weight-only int8 layer computes; a quantized model saves, loads and follows its original."""
import pytest
import torch
import torch.nn as nn

from lmforge.compress import apply_quantization
from lmforge.compress import dynamic_int8
from lmforge.compress.dynamic_int8 import DynamicInt8Linear, fbgemm_available
from lmforge.compress.int8 import Int8Linear, dequantize
from lmforge.models.registry import build_model, load_model, preset_config, save_model

needs_fbgemm = pytest.mark.skipif(not fbgemm_available(), reason="fbgemm int8 kernels are x86-only")


@needs_fbgemm
@pytest.mark.parametrize("rows", [1, 8, 128])
def test_output_is_within_the_activation_rounding_bound(rows):
    torch.manual_seed(rows)
    linear = nn.Linear(96, 40).requires_grad_(False)
    layer = DynamicInt8Linear.from_linear(linear)
    x = torch.randn(rows, 96) * 3
    w = dequantize(layer.weight_int8, layer.scales).double()
    exact = x.double() @ w.T + linear.bias.double()
    step = float(x.max().clamp(min=0) - x.min().clamp(max=0)) / 127  # 7-bit steps over the range with zero
    bound = step / 2 * w.abs().sum(dim=1) * 1.01 + 1e-4  # (N,): each input off by at most half a step
    error = (layer(x).double() - exact).abs()
    assert (error <= bound).all(), float((error / bound).max())
    assert float((layer(x) - linear(x)).abs().max()) < 0.1 * float(linear(x).abs().max())


def test_without_fbgemm_it_computes_as_the_weight_only_layer(monkeypatch):
    torch.manual_seed(0)
    linear = nn.Linear(64, 24)
    monkeypatch.setattr(dynamic_int8, "fbgemm_available", lambda: False)
    layer, reference = DynamicInt8Linear.from_linear(linear), Int8Linear.from_linear(linear)
    assert layer.packed is None
    x = torch.randn(5, 64)
    torch.testing.assert_close(layer(x), reference(x), rtol=0, atol=0)


@needs_fbgemm
def test_a_dynamic_int8_model_saves_loads_and_follows_its_original(tmp_path):
    torch.manual_seed(0)
    model = build_model(preset_config("bert-debug", vocab_size=64, dropout=0.0)).eval()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        original = model.features(ids, torch.ones_like(ids))
    record = apply_quantization(model, "dynamic-int8")
    assert record["method"] == "dynamic-int8"
    assert all(isinstance(m, DynamicInt8Linear) for n, m in model.named_modules() if n in record["modules"])
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    with torch.no_grad():
        ours, again = model.features(ids, torch.ones_like(ids)), loaded.features(ids, torch.ones_like(ids))
    torch.testing.assert_close(again, ours, rtol=0, atol=0)  # the packed weight is rebuilt from what was stored
    cosine = torch.nn.functional.cosine_similarity(ours.flatten(), original.flatten(), dim=0)
    assert cosine > 0.99, float(cosine)

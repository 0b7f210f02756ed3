"""Low-rank factorisation against independent references: at full rank both variants give back the layer;
whitened factorisation equals the least-squares optimum computed another way (the truncated SVD of the
layer's outputs W X^T, mapped back through X's pseudo-inverse) and never has more output error than plain
SVD on the calibration inputs; plain SVD equals the Eckart-Young truncation; factorised models save, load
and shrink by the fraction asked for."""
import pytest
import torch
import torch.nn as nn

from lmforge.compress import LOW_RANK_KEY, apply_low_rank, factorise, input_gram
from lmforge.compress.lowrank import rank_for
from lmforge.compress.prune import block_linears
from lmforge.errors import ConfigError
from lmforge.models.registry import build_model, load_model, preset_config, save_model


def _layer(n: int = 24, k: int = 16, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n).double()


def _correlated_inputs(k: int = 16, rows: int = 400, seed: int = 1) -> torch.Tensor:
    """Inputs whose energy sits in a few directions, as real activations do: (rows, k)."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(k, k, generator=g, dtype=torch.float64) * torch.logspace(1, -2, k, dtype=torch.float64)
    return torch.randn(rows, k, generator=g, dtype=torch.float64) @ mixing


@pytest.mark.parametrize("whitened", [False, True])
def test_full_rank_gives_back_the_layer(whitened):
    layer, x = _layer(), _correlated_inputs()
    gram = x.T @ x if whitened else None
    factor = factorise(layer, rank=16, gram=gram)
    torch.testing.assert_close(factor(x), layer(x), rtol=1e-6, atol=1e-6)


def test_plain_svd_is_the_eckart_young_truncation():
    layer = _layer()
    w = layer.weight.detach()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    reference = (u[:, :5] * s[:5]) @ vh[:5]
    torch.testing.assert_close(factorise(layer, rank=5).weight, reference)


def test_whitened_factorisation_is_the_least_squares_optimum_on_the_inputs():
    layer, x = _layer(), _correlated_inputs()
    w = layer.weight.detach()
    # Independent optimum of min ||(W - W') X^T|| over rank-5 W': truncate W X^T, map back with pinv(X^T).
    u, s, vh = torch.linalg.svd(w @ x.T, full_matrices=False)
    optimum = ((u[:, :5] * s[:5]) @ vh[:5]) @ torch.linalg.pinv(x.T)
    whitened = factorise(layer, rank=5, gram=x.T @ x).weight.detach()
    torch.testing.assert_close(whitened @ x.T, optimum @ x.T, rtol=1e-3, atol=1e-3 * float((w @ x.T).abs().max()))
    plain = factorise(layer, rank=5).weight.detach()
    error = lambda approx: float(((w - approx) @ x.T).norm())  # noqa: E731
    assert error(whitened) < 0.5 * error(plain), (error(whitened), error(plain))


def test_the_gram_matrix_is_accumulated_over_every_call():
    layer = _layer().float()
    a, b = torch.randn(3, 5, 16), torch.randn(7, 16)
    gram = input_gram({"l": layer}, lambda: [layer(a), layer(b)])["l"]
    rows = torch.cat([a.reshape(-1, 16), b]).double()
    torch.testing.assert_close(gram, rows.T @ rows)


@pytest.mark.parametrize("preset", ["debug", "llama-debug", "bert-debug"])
def test_a_factorised_model_shrinks_by_the_fraction_and_saves_and_loads(preset, tmp_path):
    torch.manual_seed(0)
    model = build_model(preset_config(preset, vocab_size=64, dropout=0.0)).eval()
    layers = {name: m for name, m in model.named_modules() if m in set(block_linears(model))}
    before = sum(m.weight.numel() for m in layers.values())
    ids = torch.randint(0, 64, (2, 9))
    grams = input_gram(layers, lambda: model(ids))
    record = apply_low_rank(model, layers, 0.2, grams)
    after = sum(m.weight.numel() for m in block_linears(model))
    assert record["whitened"] and set(record["ranks"]) == set(layers)
    assert abs(1 - after / before - 0.2) < 0.02, 1 - after / before
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    with torch.no_grad():
        out, again = model(ids), loaded(ids)
    out, again = (o if torch.is_tensor(o) else o[0] for o in (out, again))
    torch.testing.assert_close(again, out)
    with pytest.raises(ConfigError, match="already factorised"):
        apply_low_rank(loaded, {n: m for n, m in loaded.named_modules() if isinstance(m, nn.Linear)}, 0.2)
    assert LOW_RANK_KEY in (tmp_path / "config.json").read_text()


def test_a_fraction_too_small_to_shrink_any_layer_is_refused():
    layer = nn.Linear(8, 8)
    assert rank_for(layer, 0.99) is None  # 0.99 of an 8 x 8 layer is rank 3.96, which rounds to 4: no saving
    with pytest.raises(ConfigError, match="no layer gets smaller"):
        apply_low_rank(nn.Sequential(layer), {"0": layer}, 0.01)

"""LoRA against independent references: the untouched model, the formula x W^T + b + s x A^T B^T
written out by hand, W + s B A computed directly, and fp32 for the bf16 autocast path."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.registry import build_model
from lmforge.models.lora import (LoRALinear, apply_lora, count_trainable, load_lora_state_dict, lora_config,
                                lora_state_dict, merge_lora, remove_lora, unmerge_lora)

PRESETS = ("debug", "bert-debug", "t5-debug")


def _model(preset: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(preset).eval()  # eval: BERT's dropout would make outputs random


def _inputs(preset: str) -> dict:
    g = torch.Generator().manual_seed(123)
    ids = torch.randint(0, 500, (2, 9), generator=g)
    if preset == "t5-debug":
        return {"input_ids": ids, "decoder_input_ids": torch.randint(0, 500, (2, 5), generator=g)}
    return {"input_ids": ids}


def _out(model: nn.Module, preset: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**_inputs(preset))


def _expected_targets(base: nn.Module, preset: str) -> list[str]:
    """Every Linear of the transformer blocks: all of them except the output and task heads."""
    heads = {"debug": {"lm_head"}, "t5-debug": {"lm_head"},
             "bert-debug": {"pooler", "pair_head", "mlm_head.dense", "mlm_head.decoder"}}[preset]
    return sorted(n for n, m in base.named_modules() if type(m) is nn.Linear and n not in heads)


def _randomise_lora(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("preset", PRESETS)
def test_apply_lora_keeps_outputs_keys_and_ties(preset):
    base = _model(preset)
    model = copy.deepcopy(base)
    names = apply_lora(model)

    assert names == _expected_targets(base, preset)
    for name in names:
        assert isinstance(model.get_submodule(name), LoRALinear)
    # B = 0: exactly the untouched model, not merely close.
    assert torch.equal(_out(model, preset), _out(base, preset))
    base_keys, keys = set(base.state_dict()), set(model.state_dict())
    assert base_keys <= keys
    assert keys - base_keys == {f"{n}.{p}" for n in names for p in ("lora_A", "lora_B")}
    for key, value in base.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    if preset != "bert-debug":
        assert model.lm_head.weight is model.wte.weight
        assert type(model.lm_head) is nn.Linear
    else:
        assert model.mlm_head.decoder.weight is model.embeddings.wte.weight


def test_only_lora_parameters_train_and_get_gradients():
    model = _model("debug")
    names = apply_lora(model, r=4, alpha=8.0)
    lora = {n: p for n, p in model.named_parameters() if n.endswith(("lora_A", "lora_B"))}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(lora)

    expected = sum(4 * (m.in_features + m.out_features) for m in map(model.get_submodule, names))
    unique = {id(p): p for p in model.parameters()}.values()  # the tied embedding counts once
    assert count_trainable(model) == (expected, sum(p.numel() for p in unique))

    ids = torch.randint(0, 512, (2, 8))
    model.train()
    model.loss(ids[:, :-1], ids[:, 1:]).backward()
    for n, p in model.named_parameters():
        if n in lora:
            assert p.grad is not None, n
        else:
            assert p.grad is None, n
    # With B = 0 only B receives a nonzero gradient on the first step (dL/dA is proportional to B).
    assert all(lora[n].grad.abs().sum() > 0 for n in lora if n.endswith("lora_B"))


def test_lora_linear_matches_formula_with_dropout():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    w, b = base.weight.detach().clone(), base.bias.detach().clone()
    layer = LoRALinear(base, r=3, alpha=6.0, dropout=0.5)
    assert layer.weight is base.weight and layer.bias is base.bias
    assert (layer.in_features, layer.out_features, layer.r, layer.alpha, layer.merged) == (12, 7, 3, 6.0, False)
    assert layer.lora_A.shape == (3, 12) and layer.lora_B.shape == (7, 3)
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    with torch.no_grad():
        layer.lora_B.normal_()
    A, B, s = layer.lora_A.detach(), layer.lora_B.detach(), 6.0 / 3
    x = torch.randn(4, 5, 12)

    layer.train()
    torch.manual_seed(7)
    got = layer(x)
    torch.manual_seed(7)
    ref = x @ w.T + b + F.dropout(x, 0.5, training=True) @ A.T @ B.T * s
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)

    layer.eval()  # no dropout: the plain formula
    torch.testing.assert_close(layer(x), x @ (w + s * B @ A).T + b, atol=1e-5, rtol=1e-5)


def _train_lora_steps(model: nn.Module, steps: int = 3) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    g = torch.Generator().manual_seed(5)
    model.train()
    for _ in range(steps):
        ids = torch.randint(0, 512, (2, 8), generator=g)
        opt.zero_grad()
        model.loss(ids[:, :-1], ids[:, 1:]).backward()
        opt.step()
    model.eval()


def test_merge_equals_unmerged_and_unmerge_restores():
    model = _model("debug")
    names = apply_lora(model, r=4, alpha=8.0)
    _randomise_lora(model)
    _train_lora_steps(model)
    original = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    unmerged_out = _out(model, "debug")

    merge_lora(model)
    for n in names:
        m = model.get_submodule(n)
        assert m.merged
        ref = original[n] + (m.lora_B @ m.lora_A).detach() * m.alpha / m.r
        torch.testing.assert_close(m.weight.detach(), ref, atol=1e-6, rtol=0)
    merged_weights = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    torch.testing.assert_close(_out(model, "debug"), unmerged_out, atol=1e-5, rtol=0)

    merge_lora(model)  # idempotent
    for n in names:
        assert torch.equal(model.get_submodule(n).weight, merged_weights[n])

    unmerge_lora(model)
    unmerge_lora(model)
    for n in names:
        assert not model.get_submodule(n).merged
        torch.testing.assert_close(model.get_submodule(n).weight.detach(), original[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(_out(model, "debug"), unmerged_out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", ["debug", "t5-debug"])
def test_remove_lora_gives_plain_linears_with_same_outputs_and_keys(preset):
    base = _model(preset)
    model = copy.deepcopy(base)
    names = apply_lora(model)
    _randomise_lora(model)
    expected = _out(model, preset)

    assert remove_lora(model) is model
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    for n in names:
        assert type(model.get_submodule(n)) is nn.Linear
    assert lora_config(model) is None
    assert set(model.state_dict()) == set(base.state_dict())
    torch.testing.assert_close(_out(model, preset), expected, atol=1e-5, rtol=0)
    assert model.lm_head.weight is model.wte.weight
    # The adapters really changed the weights, so the equality above is not vacuous.
    assert not torch.allclose(_out(base, preset), expected, atol=1e-4)


def test_lora_state_dict_round_trip():
    model = _model("debug")
    apply_lora(model, r=4, alpha=8.0, exclude=("1",))  # only block 0
    _randomise_lora(model)
    state = lora_state_dict(model)
    assert set(state) == {k for k in model.state_dict() if k.endswith(("lora_A", "lora_B"))}
    assert state and all(k.startswith("blocks.0.") for k in state)
    cfg = lora_config(model)
    assert cfg == {"r": 4, "alpha": 8.0, "dropout": 0.0,
                   "targets": ["blocks.0.attn.proj", "blocks.0.attn.qkv", "blocks.0.mlp.down", "blocks.0.mlp.up"]}

    fresh = _model("debug")
    assert lora_config(fresh) is None
    apply_lora(fresh, r=cfg["r"], alpha=cfg["alpha"], dropout=cfg["dropout"], targets=cfg["targets"])
    assert lora_config(fresh) == cfg
    assert not torch.equal(_out(fresh, "debug"), _out(model, "debug"))
    load_lora_state_dict(fresh, state)
    assert torch.equal(_out(fresh, "debug"), _out(model, "debug"))

    # Loading into a merged model replaces the merged update too.
    merged = _model("debug")
    apply_lora(merged, r=4, alpha=8.0, targets=cfg["targets"])
    merged_base = _out(merged, "debug")
    merge_lora(merged)
    load_lora_state_dict(merged, state)
    torch.testing.assert_close(_out(merged, "debug"), _out(model, "debug"), atol=1e-5, rtol=0)
    unmerge_lora(merged)
    load_lora_state_dict(merged, {k: torch.zeros_like(v) if k.endswith("lora_B") else v for k, v in state.items()})
    torch.testing.assert_close(_out(merged, "debug"), merged_base, atol=1e-5, rtol=0)


def test_load_lora_state_dict_rejects_mismatches():
    model = _model("debug")
    apply_lora(model, r=4)
    state = lora_state_dict(model)
    other = _model("debug")
    apply_lora(other, r=8)

    cases = {
        "shape": lora_state_dict(other),
        "missing": {k: v for k, v in state.items() if k != "blocks.0.attn.qkv.lora_A"},
        "unexpected": {**state, "blocks.9.attn.qkv.lora_A": torch.zeros(4, 64)},
    }
    for word, bad in cases.items():
        with pytest.raises(CheckpointError) as e:
            load_lora_state_dict(model, bad)
        assert word in str(e.value) and "\n" not in str(e.value)
    assert "blocks.0.attn.qkv.lora_A" in str(pytest.raises(CheckpointError, load_lora_state_dict, model,
                                                           cases["missing"]).value)
    with pytest.raises(CheckpointError, match="no LoRA"):
        load_lora_state_dict(_model("debug"), state)
    # A failed load changes nothing.
    assert all(torch.equal(v, state[k]) for k, v in lora_state_dict(model).items())


def test_apply_lora_config_errors():
    model = _model("debug")
    with pytest.raises(ConfigError) as e:
        apply_lora(model, targets=("query", "value"))
    assert "qkv" in str(e.value) and "lm_head" in str(e.value)
    with pytest.raises(ConfigError):
        apply_lora(model, exclude=("blocks",))
    with pytest.raises(ConfigError, match="tied"):
        apply_lora(model, targets=("lm_head",))
    with pytest.raises(ConfigError):
        apply_lora(model, r=0)
    assert lora_config(model) is None  # nothing was replaced by the failed calls
    assert all(p.requires_grad for p in model.parameters())

    apply_lora(model, targets=("qkv",))
    with pytest.raises(ConfigError, match="already"):
        apply_lora(model, targets=("up",))


def test_exclude_and_custom_targets_on_t5():
    model = _model("t5-debug")
    names = apply_lora(model, targets=("q", "kv", "qkv"), exclude=("encoder",))
    assert names == sorted(f"decoder.blocks.{i}.{m}" for i in range(2)
                           for m in ("attn.qkv", "cross_attn.q", "cross_attn.kv"))


def test_lora_linear_under_bf16_autocast():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 16), r=4, alpha=8.0)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.5)
    x = torch.randn(3, 32)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, atol=5e-2, rtol=2e-2)

    # A whole adapted model trains under autocast: fp32 parameters, gradients on the adapters.
    model = _model("debug")
    apply_lora(model)
    _randomise_lora(model)
    ids = torch.randint(0, 512, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(ids[:, :-1], ids[:, 1:])
    loss.backward()
    with torch.no_grad():
        ref_loss = model.loss(ids[:, :-1], ids[:, 1:])
    torch.testing.assert_close(loss.float(), ref_loss, atol=2e-2, rtol=2e-2)
    grads = [p.grad for n, p in model.named_parameters() if n.endswith("lora_A")]
    assert grads and all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)

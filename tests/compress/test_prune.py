"""Pruning against independent references: a structurally pruned model computes exactly what the
original computes with the removed heads' and neurons' output weights zeroed; Taylor importance equals
the derivative of the loss with respect to a scale on each unit; magnitude pruning zeroes the smallest
weights and nothing else; pruned runs save, load and shrink."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from lmforge.compress.prune import (check_sparsity, magnitude_importance, prunable_blocks, prune_magnitude,
                                    prune_structured, taylor_importance, units_to_keep)
from lmforge.errors import ConfigError
from lmforge.models.heads import TaskModel, TaskModelConfig
from lmforge.models.registry import build_model, load_model, preset_config, save_model

VOCAB = 97
CASES = ["classify[bert-debug]", "bert-debug", "debug", "llama-debug", "classify[debug]"]


def _model(case: str) -> nn.Module:
    torch.manual_seed(0)
    if case.startswith("classify["):
        backbone = preset_config(case[len("classify["):-1], vocab_size=VOCAB, dropout=0.0)
        model = TaskModel(TaskModelConfig(backbone=backbone.to_dict(), labels=["a", "b", "c"], classifier_dropout=0.0))
    else:
        model = build_model(preset_config(case, vocab_size=VOCAB, dropout=0.0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial biases, so a wrongly sliced bias shows
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return model.eval()


def _ids(seed: int = 3) -> torch.Tensor:
    return torch.randint(2, VOCAB, (2, 11), generator=torch.Generator().manual_seed(seed))


def _out(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids, attention_mask=torch.ones_like(ids)) if isinstance(model, TaskModel) else model(ids)
    return out if torch.is_tensor(out) else out[0]


def _zeroed_reference(model: nn.Module, importance, sparsity: float) -> nn.Module:
    """The original model with the output weights of every unit pruning removes set to zero."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for block, (heads, neurons) in zip(prunable_blocks(ref), importance):
            drop = torch.ones(neurons.numel(), dtype=torch.bool)
            drop[units_to_keep(neurons, sparsity)] = False
            block.mlp.down.weight[:, drop] = 0.0
            if heads is not None:
                gone = torch.ones(heads.numel(), dtype=torch.bool)
                gone[units_to_keep(heads, sparsity)] = False
                hs = block.attn.head_dim
                block.attn.proj.weight.view(-1, heads.numel(), hs)[:, gone] = 0.0
    return ref


@pytest.mark.parametrize("case", CASES)
def test_structured_pruning_equals_original_with_removed_units_zeroed(case):
    model = _model(case)
    importance = magnitude_importance(model)
    reference = _zeroed_reference(model, importance, 0.5)
    before = sum(p.numel() for p in model.parameters())
    record = prune_structured(model, 0.5, importance)
    assert sum(p.numel() for p in model.parameters()) < before
    torch.testing.assert_close(_out(model, _ids()), _out(reference, _ids()), atol=1e-5, rtol=1e-5)
    assert record["heads_pruned"] == ("bert" in case)


def test_pruned_run_saves_loads_as_the_smaller_model(tmp_path):
    model = _model("classify[bert-debug]")
    save_model(model, tmp_path / "full")
    prune_structured(model, 0.5, magnitude_importance(model))
    save_model(model, tmp_path / "pruned")
    loaded = load_model(tmp_path / "pruned").eval()
    assert loaded.backbone.config.layer_heads == model.backbone.config.layer_heads
    assert [b.attn.n_head for b in prunable_blocks(loaded)] == loaded.backbone.config.layer_heads
    torch.testing.assert_close(_out(loaded, _ids()), _out(model, _ids()), atol=0, rtol=0)
    full, pruned = (tmp_path / d / "model.safetensors" for d in ("full", "pruned"))
    assert pruned.stat().st_size < full.stat().st_size


def test_taylor_importance_is_the_derivative_of_the_loss_by_a_scale_on_each_unit():
    model = _model("classify[bert-debug]")
    ids, labels = _ids(), torch.tensor([0, 2])

    def loss_fn(m, batch):
        return F.cross_entropy(m(batch, attention_mask=torch.ones_like(batch)), labels)

    scores = taylor_importance(model, [ids], loss_fn)
    block, layer = prunable_blocks(model)[1], 1
    params = dict(model.named_parameters())
    hs, nh = block.attn.head_dim, block.attn.n_head

    def scaled_loss(alpha, head=None, neuron=None):
        p = dict(params)
        prefix = f"backbone.blocks.{layer}."
        if head is not None:
            rows = torch.zeros(3 * nh * hs)
            rows.view(3, nh, hs)[:, head] = 1.0
            cols = torch.zeros(nh * hs)
            cols.view(nh, hs)[head] = 1.0
            p[prefix + "attn.qkv.weight"] = params[prefix + "attn.qkv.weight"] * (1 + (alpha - 1) * rows[:, None])
            p[prefix + "attn.qkv.bias"] = params[prefix + "attn.qkv.bias"] * (1 + (alpha - 1) * rows)
            p[prefix + "attn.proj.weight"] = params[prefix + "attn.proj.weight"] * (1 + (alpha - 1) * cols)
        else:
            mask = torch.zeros(block.mlp.up.out_features)
            mask[neuron] = 1.0
            p[prefix + "mlp.up.weight"] = params[prefix + "mlp.up.weight"] * (1 + (alpha - 1) * mask[:, None])
            p[prefix + "mlp.up.bias"] = params[prefix + "mlp.up.bias"] * (1 + (alpha - 1) * mask)
            p[prefix + "mlp.down.weight"] = params[prefix + "mlp.down.weight"] * (1 + (alpha - 1) * mask)
        return loss_fn(lambda *a, **k: functional_call(model, p, a, k), ids)

    for unit in ({"head": 1}, {"neuron": 5}):
        alpha = torch.tensor(1.0, requires_grad=True)
        (grad,) = torch.autograd.grad(scaled_loss(alpha, **unit), alpha)
        got = scores[layer][0][unit["head"]] if "head" in unit else scores[layer][1][unit["neuron"]]
        torch.testing.assert_close(got, grad.detach() ** 2, rtol=1e-4, atol=1e-9)


def test_magnitude_pruning_zeroes_the_smallest_weights_and_nothing_else():
    model = _model("debug")
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    record = prune_magnitude(model, 0.3)
    assert record["zeroed_weights"] == pytest.approx(0.3 * record["block_weights"], abs=2)
    kept, zeroed = [], []
    for name, p in model.named_parameters():
        if ".blocks." in f".{name}" and name.endswith("weight") and p.dim() == 2:
            gone = (p == 0) & (original[name] != 0)
            zeroed.append(original[name][gone].abs())
            kept.append(p[~gone].abs())
            torch.testing.assert_close(p[~gone], original[name][~gone], atol=0, rtol=0)
        else:
            torch.testing.assert_close(p, original[name], atol=0, rtol=0)
    assert torch.cat(zeroed).max() <= torch.cat(kept)[torch.cat(kept) > 0].min()


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.2, 1.5])
def test_sparsity_outside_the_open_unit_interval_is_refused(sparsity):
    with pytest.raises(ConfigError, match="--sparsity must be between 0 and 1"):
        check_sparsity(sparsity)


def test_structured_pruning_refuses_families_without_per_layer_sizes():
    with pytest.raises(ConfigError, match="structured pruning does not support t5"):
        prunable_blocks(_model("t5-debug"))

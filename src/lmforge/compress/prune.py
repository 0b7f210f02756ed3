"""Pruning: take out the parts of a model that matter least.

Structured pruning removes whole attention heads and MLP neurons. The projections that carried them
are rebuilt without those rows and columns, so tensors shrink, the saved run is smaller, and it loads
as a smaller model: the backbone config records each layer's head count (`layer_heads`) and MLP width
(`layer_intermediate`). Unstructured magnitude pruning zeroes the smallest weights and keeps the
shapes; the zeros give no speed on dense kernels and are there for comparison.

Each layer keeps the same fraction of its heads and neurons, those with the highest importance:
- magnitude: the squared weights a head or neuron owns (its rows and columns in the projections);
- taylor: the first-order estimate of the loss change when the unit is removed, (sum of w * dL/dw
  over the unit's weights) squared, summed over batches (Molchanov et al. 2019).
Decoders keep their heads: the key/value caches of inference hold the same heads in every layer.
Shapes: C model width, nh heads, hs head size, H MLP width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.models.common.attention import SelfAttention
from lmforge.models.common.mlp import MLP
from lmforge.models.heads import TaskModel, block_lists
from lmforge.models.registry import traits_of

PRUNE_METHODS = ("structured", "magnitude", "lowrank")
IMPORTANCE = ("magnitude", "taylor")


@dataclass
class PrunableBlock:
    attn: SelfAttention | None   # None where heads are kept (decoders)
    mlp: MLP


def backbone_of(model: nn.Module) -> nn.Module:
    return model.backbone if isinstance(model, TaskModel) else model


def prunable_blocks(model: nn.Module) -> list[PrunableBlock]:
    """The blocks of a BERT or GPT-family backbone, with the parts structured pruning may shrink."""
    backbone = backbone_of(model)
    if not hasattr(backbone.config, "layer_intermediate"):
        raise ConfigError(f"structured pruning does not support {backbone.family} models",
                          "prune a BERT, GPT or Llama run, or use --method magnitude")
    heads = hasattr(backbone.config, "layer_heads")
    return [PrunableBlock(attn=block.attn if heads else None, mlp=block.mlp)
            for blocks in block_lists(backbone) for block in blocks]


def check_sparsity(sparsity: float) -> float:
    if not 0.0 < sparsity < 1.0:
        raise ConfigError(f"--sparsity must be between 0 and 1 (exclusive), got {sparsity}",
                          "pass the fraction to remove, e.g. --sparsity 0.3")
    return float(sparsity)


# ---------------------------------------------------------------- what each head and neuron owns
def _head_rows(nh: int, hs: int, heads: torch.Tensor) -> torch.Tensor:
    """Row indices of the fused q/k/v projection that belong to `heads` (multi-head attention)."""
    per_head = (heads[:, None] * hs + torch.arange(hs)).reshape(-1)
    return torch.cat([part * nh * hs + per_head for part in range(3)])


def _head_columns(hs: int, heads: torch.Tensor) -> torch.Tensor:
    return (heads[:, None] * hs + torch.arange(hs)).reshape(-1)


def head_totals(attn: SelfAttention, value: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """(nh,) sum of `value(p)` over each head's q/k/v rows and output-projection columns."""
    nh, hs = attn.n_head, attn.head_dim
    total = value(attn.qkv.weight).view(3, nh, hs, -1).sum(dim=(0, 2, 3))
    if attn.qkv.bias is not None:
        total = total + value(attn.qkv.bias).view(3, nh, hs).sum(dim=(0, 2))
    return total + value(attn.proj.weight).view(-1, nh, hs).sum(dim=(0, 2))


def neuron_totals(mlp: MLP, value: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """(H,) sum of `value(p)` over each neuron's input rows (up, gate) and output column (down)."""
    total = value(mlp.down.weight).sum(dim=0)
    for layer in [mlp.up] + ([mlp.gate] if hasattr(mlp, "gate") else []):
        total = total + value(layer.weight).sum(dim=1)
        if layer.bias is not None:
            total = total + value(layer.bias)
    return total


# ---------------------------------------------------------------- importance
def magnitude_importance(model: nn.Module) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
    """Per block (head scores or None, neuron scores): the squared weights each unit owns."""
    square = lambda p: p.detach().float() ** 2  # noqa: E731
    return [(head_totals(b.attn, square) if b.attn is not None else None, neuron_totals(b.mlp, square))
            for b in prunable_blocks(model)]


def taylor_importance(model: nn.Module, batches: Iterable, loss_fn: Callable[[nn.Module, object], torch.Tensor]
                      ) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
    """Per block (head scores or None, neuron scores): sum over batches of (sum_unit w * dL/dw)^2."""
    blocks = prunable_blocks(model)
    scores = [[None if b.attn is None else torch.zeros(b.attn.n_head), torch.zeros(b.mlp.up.out_features)]
              for b in blocks]
    first_order = lambda p: p.detach().float() * p.grad.float()  # noqa: E731
    was_training = model.training
    model.eval()  # dropout off: the estimate is of the deterministic model that will be pruned
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            for score, block in zip(scores, blocks):
                if block.attn is not None:
                    score[0] += head_totals(block.attn, first_order) ** 2
                score[1] += neuron_totals(block.mlp, first_order) ** 2
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return [(heads, neurons) for heads, neurons in scores]


def units_to_keep(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Sorted indices of the highest-scoring round(n * (1 - sparsity)) units (at least one)."""
    keep = max(1, round(scores.numel() * (1.0 - sparsity)))
    return scores.topk(keep).indices.sort().values


# ---------------------------------------------------------------- shrinking
def _sliced_linear(old: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = old.weight.detach()
    weight = weight if rows is None else weight[rows]
    weight = weight if cols is None else weight[:, cols]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=old.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if old.bias is not None:
            new.bias.copy_(old.bias.detach() if rows is None else old.bias.detach()[rows])
    return new


def shrink_attention(attn: SelfAttention, heads: torch.Tensor) -> None:
    """Keep only `heads` (sorted indices) of a multi-head attention layer, in place."""
    assert attn.n_kv_head == attn.n_head, "head pruning is for multi-head (not grouped) attention"
    attn.qkv = _sliced_linear(attn.qkv, rows=_head_rows(attn.n_head, attn.head_dim, heads))
    attn.proj = _sliced_linear(attn.proj, cols=_head_columns(attn.head_dim, heads))
    attn.n_head = attn.n_kv_head = len(heads)


def shrink_mlp(mlp: MLP, neurons: torch.Tensor) -> None:
    """Keep only `neurons` (sorted indices) of an MLP's hidden layer, in place."""
    mlp.up = _sliced_linear(mlp.up, rows=neurons)
    if hasattr(mlp, "gate"):
        mlp.gate = _sliced_linear(mlp.gate, rows=neurons)
    mlp.down = _sliced_linear(mlp.down, cols=neurons)


def prune_structured(model: nn.Module, sparsity: float,
                     importance: list[tuple[torch.Tensor | None, torch.Tensor]]) -> dict:
    """Remove `sparsity` of each layer's heads and MLP neurons, lowest `importance` first, in place;
    the backbone config then describes the smaller model. Returns what was kept, per layer."""
    check_sparsity(sparsity)
    blocks, backbone = prunable_blocks(model), backbone_of(model)
    kept_heads, kept_neurons = [], []
    for block, (head_scores, neuron_scores) in zip(blocks, importance):
        if block.attn is not None:
            heads = units_to_keep(head_scores, sparsity)
            shrink_attention(block.attn, heads)
            kept_heads.append(len(heads))
        neurons = units_to_keep(neuron_scores, sparsity)
        shrink_mlp(block.mlp, neurons)
        kept_neurons.append(len(neurons))
    if kept_heads:
        backbone.config.layer_heads = kept_heads
    backbone.config.layer_intermediate = kept_neurons
    if isinstance(model, TaskModel):  # the wrapper's config keeps its own copy of the backbone's
        model.config.backbone = backbone.config.to_dict()
    return {"layer_heads": kept_heads or None, "layer_intermediate": kept_neurons,
            "heads_pruned": traits_of(backbone).structure != "decoder"}


def block_linears(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers inside the transformer blocks (embeddings and task heads excluded)."""
    return [m for blocks in block_lists(backbone_of(model)) for m in blocks.modules() if isinstance(m, nn.Linear)]


def prune_magnitude(model: nn.Module, sparsity: float) -> dict:
    """Zero the `sparsity` fraction of the blocks' Linear weights with the smallest |w| (one global
    threshold), in place. Shapes stay: dense kernels run no faster on the zeros."""
    check_sparsity(sparsity)
    layers = block_linears(model)
    if not layers:
        raise ConfigError(f"{backbone_of(model).family} models have no transformer blocks to prune",
                          "prune a BERT, GPT, Llama or T5 run")
    magnitudes = torch.cat([m.weight.detach().abs().flatten().float() for m in layers])
    count = int(magnitudes.numel() * sparsity)
    threshold = magnitudes.kthvalue(max(1, count)).values
    zeroed = 0
    with torch.no_grad():
        for layer in layers:
            drop = layer.weight.abs() <= threshold
            layer.weight.masked_fill_(drop, 0.0)
            zeroed += int(drop.sum())
    return {"zeroed_weights": zeroed, "block_weights": int(magnitudes.numel())}

"""Fine-tuning methods, applied to a task model before the trainer sees it: full (everything trains),
frozen (only the head), LoRA (low-rank adapters on the backbone's projections), plus optional frozen
embeddings / lower blocks and per-group learning-rate scales."""
from __future__ import annotations

import torch.nn as nn

from lmforge.config import MethodConfig
from lmforge.errors import ConfigError
from lmforge.models.heads import TaskModel, block_lists
from lmforge.models.lora import DEFAULT_TARGETS, apply_lora, lora_config
from lmforge.models.registry import traits_of


def apply_method(model: TaskModel, method: MethodConfig) -> dict:
    """Freeze / inject adapters on a TaskModel; returns {"trainable_parameters": n, "total_parameters": n}."""
    backbone = model.backbone
    if method.method == "lora":
        apply_lora(backbone, r=method.lora_r, alpha=method.lora_alpha, dropout=method.lora_dropout,
                   targets=tuple(method.lora_targets or DEFAULT_TARGETS))
        model.config.lora = lora_config(backbone)
    elif method.method == "frozen":
        backbone.requires_grad_(False)
    if method.method != "lora":
        _freeze_parts(backbone, method)
    if model.head is not None:
        model.head.requires_grad_(True)
    if traits_of(backbone).pooling == "pooler" and model.config.head == "sequence":
        # The pooled [CLS] feeds the classifier, so the pooler trains with the head under every method:
        # MLM-only pretraining and sentence-embedding checkpoints leave it untrained.
        backbone.pooler.requires_grad_(True)
    model.config.extra.update(head_lr_scale=method.head_lr_scale, layer_lr_decay=method.layer_lr_decay)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if trainable == 0:
        raise ConfigError("nothing left to train", "freeze fewer layers or use --method.method full")
    return {"trainable_parameters": trainable, "total_parameters": total}


def _freeze_parts(backbone: nn.Module, method: MethodConfig) -> None:
    if method.freeze_embeddings:
        for m in backbone.modules():
            if isinstance(m, nn.Embedding):
                m.requires_grad_(False)
    if not method.freeze_layers:
        return
    stacks = block_lists(backbone)
    if not stacks:
        raise ConfigError(f"method.freeze_layers needs a model made of blocks; {backbone.family} has none",
                          "drop --method.freeze_layers")
    depth = max(len(s) for s in stacks)
    if method.freeze_layers > depth:
        raise ConfigError(f"method.freeze_layers is {method.freeze_layers} but the model has {depth} blocks",
                          f"pass a value from 0 to {depth}")
    for stack in stacks:
        for block in list(stack)[:method.freeze_layers]:
            block.requires_grad_(False)

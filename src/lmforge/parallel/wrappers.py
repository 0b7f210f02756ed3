"""Wrappers applied to a model from outside it: DDP, activation checkpointing, torch.compile."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from lmforge.models.heads import block_lists
from lmforge.parallel.distributed import DistInfo


def apply_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    if not info.enabled:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute each transformer block's activations in the backward pass (less memory, ~30% more compute)."""
    for block in [b for blocks in block_lists(model) for b in blocks]:
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed
    return model


def apply_compile(model: nn.Module) -> nn.Module:
    """Compile each block separately: same speed-up as whole-model compile, much faster to compile.

    In place (`Module.compile`), so parameter names, and with them saved weights and checkpoints, stay
    those of the plain model; wrapping in `torch.compile(block)` would prefix them with `_orig_mod`.
    """
    for block in [b for blocks in block_lists(model) for b in blocks]:
        block.compile(dynamic=False)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / compile wrappers (for saving and evaluation)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model

"""Wrappers applied to a model from outside it: activation checkpointing, torch.compile, DDP and FSDP2.

Order (as `lmforge.train.trainer` applies them): activation checkpointing -> compile -> DDP or FSDP, so
that checkpointing and compilation see the plain blocks and sharding sees the compiled ones.
"""
from __future__ import annotations

import contextlib
from functools import partial

import torch
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from lmforge.errors import ConfigError
from lmforge.models.heads import block_lists
from lmforge.parallel.distributed import DistInfo

try:  # torch >= 2.6
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
except ImportError:  # torch 2.4 and 2.5 ship FSDP2 under its first name
    from torch.distributed._composable.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
try:  # torch >= 2.5
    from torch.distributed.tensor import DTensor
except ImportError:
    from torch.distributed._tensor import DTensor

# Selective checkpointing keeps these ops' outputs (the expensive ones) and recomputes everything else
# (norms, activation functions, rotary positions, residual adds) during backward.
_aten = torch.ops.aten
SAVED_UNDER_SELECTIVE = {
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default,
    _aten._scaled_dot_product_flash_attention.default, _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    *([_aten._scaled_dot_product_cudnn_attention.default]
      if hasattr(_aten, "_scaled_dot_product_cudnn_attention") else []),
}


def apply_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    if not info.enabled:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [b for blocks in block_lists(model) for b in blocks]


def _keep_matmul_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_UNDER_SELECTIVE else CheckpointPolicy.PREFER_RECOMPUTE


def apply_activation_checkpointing(model: nn.Module, mode: str = "full") -> nn.Module:
    """Recompute each transformer block's activations in the backward pass instead of keeping them.

    "full" keeps only each block's input (least memory, about a third more compute); "selective" also keeps
    the outputs of the matmuls and the attention kernel, and recomputes only the cheap elementwise work.
    """
    if mode == "none":
        return model
    selective = partial(create_selective_checkpoint_contexts, _keep_matmul_outputs) if mode == "selective" else None
    for block in _blocks(model):
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            if selective is None:
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, context_fn=selective, **kwargs)

        block.forward = checkpointed
    return model


def apply_compile(model: nn.Module) -> nn.Module:
    """Compile each block separately: same speed-up as whole-model compile, much faster to compile.

    In place (`Module.compile`), so parameter names, and with them saved weights and checkpoints, stay
    those of the plain model; wrapping in `torch.compile(block)` would prefix them with `_orig_mod`.
    """
    for block in _blocks(model):
        block.compile(dynamic=False)
    return model


def apply_fsdp(model: nn.Module, info: DistInfo, *, precision: str = "fp32",
               reshard_after_forward: bool = True, shard_group_size: int | None = None) -> nn.Module:
    """Shard `model` over the ranks with FSDP2 (`fully_shard`): each transformer block, then the root.

    Under bf16 the gathered weights are cast to bf16 for compute while the sharded fp32 weights stay the
    optimizer's master copy; gradients are reduced in fp32 and averaged over ranks, as DDP does.
    `reshard_after_forward` frees each block's gathered weights after its forward (gathered again for
    backward): less memory for one more all-gather per block.
    With `shard_group_size` (hybrid sharding, for many nodes) each group of that many ranks holds one sharded
    copy and the groups are replicas: all-gathers stay inside a group (a node's fast links), and only the
    gradient all-reduce crosses the groups.
    """
    blocks = _blocks(model)
    if not blocks:
        raise ConfigError(f"{type(model).__name__} has no transformer blocks for FSDP to shard",
                          "use --train.parallel ddp for this model family")
    if not info.enabled:
        return model  # one process: nothing to shard
    mesh = _device_mesh(info, shard_group_size)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if precision == "bf16" else None,
                                  reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return model


def _device_mesh(info: DistInfo, shard_group_size: int | None):
    if shard_group_size is None or shard_group_size >= info.world_size:
        return init_device_mesh(info.device.type, (info.world_size,))
    if info.world_size % shard_group_size:
        raise ConfigError(f"train.shard_group_size ({shard_group_size}) does not divide the {info.world_size} "
                          "processes", "pass the processes per node as --train.shard_group_size")
    # FSDP2 replicates over a 2-D mesh's first dimension and shards over its second.
    return init_device_mesh(info.device.type, (info.world_size // shard_group_size, shard_group_size),
                            mesh_dim_names=("replicate", "shard"))


def on_meta_device(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def materialize(model: nn.Module, device: torch.device) -> nn.Module:
    """Give a model built on the meta device (`build_model(..., device="meta")`) its memory on `device`, and
    initialise it with the model's own `reset_parameters`.

    Called after `apply_fsdp`, each rank allocates only its shards: a 7B model never exists whole on one
    rank. A model that is not on the meta device is returned unchanged."""
    if not on_meta_device(model):
        return model
    if any(True for _ in model.buffers()):  # their values come from the constructor, which never ran for real
        raise ConfigError(f"{type(model).__name__} has buffers, which a model built on the meta device lacks",
                          "build this model on a real device")
    model.to_empty(device=device)
    with torch.no_grad():
        unwrap(model).reset_parameters()
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def skip_gradient_sync(model: nn.Module, info: DistInfo):
    """A context in which backward accumulates local gradients without averaging them over ranks
    (every micro-batch of a step but the last)."""
    if not info.enabled:
        return contextlib.nullcontext()
    if isinstance(model, FSDPModule):
        return _fsdp_no_sync(model)
    return model.no_sync()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the gradients' global norm to `max_norm`; returns the norm before clipping as a plain tensor
    (under FSDP the norm is computed over every rank's shards)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / compile wrappers (for saving and evaluation)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model

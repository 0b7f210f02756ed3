"""Process groups and the wrappers applied to a model from outside it: DDP, activation
checkpointing and torch.compile. Models themselves never touch torch.distributed."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from lmforge.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available",
                          "use cpu or auto (--train.device when training, --device otherwise)")
    if name not in ("cpu",) and not name.startswith(("cuda", "mps")):
        raise ConfigError(f"unknown device {name!r}", "use auto, cpu or cuda")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment (one process when absent).

    NCCL on GPUs, gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def apply_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute each transformer block's activations in the backward pass (less memory, ~30% more compute)."""
    from torch.utils.checkpoint import checkpoint

    for block in [b for blocks in _block_lists(model) for b in blocks]:
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
    for block in [b for blocks in _block_lists(model) for b in blocks]:
        block.compile(dynamic=False)
    return model


def _block_lists(model: nn.Module) -> list[nn.ModuleList]:
    """Every `blocks` list of the model: one in a decoder-only model, the encoder's and decoder's in T5."""
    return [m.blocks for m in model.modules() if isinstance(getattr(m, "blocks", None), nn.ModuleList)]


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / compile wrappers (for saving and evaluation)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model

"""Sharded checkpoints through torch.distributed.checkpoint (DCP): every rank writes only its own shards.

No rank ever holds the whole model: under FSDP each rank writes the slices of the weights and optimizer
moments it owns, and DCP records in `.metadata` where every slice of every tensor lies. Reading plans the
opposite way for whatever layout the reader has, so a checkpoint saved on N ranks loads on M ranks, sharded
or not, and in a single process without any process group (which is how `lmforge convert` reads it).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from lmforge.errors import CheckpointError

METADATA = ".metadata"  # DCP writes it last, from the coordinating rank, once every shard is written


def is_complete(directory: Path) -> bool:
    return (Path(directory) / METADATA).is_file()


def save_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write `model`'s and `optimizer`'s state into `directory`; under a process group every rank calls it."""
    weights, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": weights, "optimizer": optimizer_state}, checkpoint_id=str(directory))


def checkpoint_group():
    """A process group of its own for background saves (their collectives run beside training's), or None in
    one process. Every rank must call it, in the same order."""
    return dist.new_group(backend="gloo") if dist.is_available() and dist.is_initialized() else None


def save_sharded_in_background(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, group):
    """Start writing what `save_sharded` writes; returns a future that completes once every shard is written.
    The state is copied to CPU memory before this returns, so training may change the weights at once."""
    weights, optimizer_state = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # in one process DCP warns that it assumes one process
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        return dcp.async_save({"model": weights, "optimizer": optimizer_state}, checkpoint_id=str(directory),
                              process_group=group)


def load_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load `directory` into `model` (and `optimizer`), resharding to their current layout.

    A checkpoint of another model shape is refused in one line before anything is read."""
    check_shapes(directory, model)
    if optimizer is None:  # weights only, into the model's own tensors
        dcp.load({"model": model.state_dict()}, checkpoint_id=str(directory))
        return
    weights, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": weights, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def check_shapes(directory: Path, model: nn.Module) -> None:
    """Raise a CheckpointError naming the first weight whose saved shape differs from `model`'s (or that is
    missing from the checkpoint)."""
    try:
        saved = dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata
    except Exception as e:
        raise CheckpointError(f"sharded checkpoint {directory} is unreadable ({type(e).__name__})",
                              f"delete {Path(directory).parent} to resume from the previous checkpoint") from None
    for name, tensor in model.state_dict().items():
        entry = saved.get(f"model.{name}")
        if entry is None:
            raise CheckpointError(f"sharded checkpoint {directory} has no weight {name}",
                                  "resume with the model config the run was started with")
        if tuple(entry.size) != tuple(tensor.shape):  # a DTensor's shape is the whole tensor's
            raise CheckpointError(f"sharded checkpoint {directory} holds {name} of shape {list(entry.size)}, the "
                                  f"model has {list(tensor.shape)}",
                                  "resume with the model config the run was started with")


"""Objectives that own parameters: trained beside the model, saved with the optimizer, never in the model.

An objective may define `trainable(model) -> nn.Module | None`: parameters of its own that the loss
needs and the saved model does not (distillation's learned projection from a narrower student's hidden
states to the teacher's width, say). The trainer calls it once, before the first step; the module's
parameters join the optimizer as one more group (no weight decay), and its tensors go into each
checkpoint's optimizer file under `objective.`, so a resumed run continues with them exactly.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from lmforge.errors import CheckpointError, ConfigError

PREFIX = "objective."


def attach_objective_parameters(objective, model: nn.Module, optimizer: torch.optim.Optimizer, *, device,
                                world_size: int, sharded_checkpoints: bool, private: bool) -> nn.Module | None:
    """The objective's own trainable module, on `device` and in `optimizer`; None when it has none."""
    module = objective.trainable(model) if hasattr(objective, "trainable") else None
    if module is None or not any(True for _ in module.parameters()):
        return None
    # Its gradients are not synchronised by DDP or FSDP, which wrap the model only.
    checks = [(world_size == 1, "this objective trains parameters of its own and runs in one process",
               "launch without torchrun"),
              (not sharded_checkpoints, "this objective's own parameters are not written to sharded checkpoints",
               "drop --train.checkpoint_format sharded"),
              (not private, "this objective's own parameters cannot be trained with DP-SGD",
               "train without --privacy")]
    for ok, what, fix in checks:
        if not ok:
            raise ConfigError(what, fix)
    module.to(device)
    optimizer.add_param_group({"params": list(module.parameters()), "weight_decay": 0.0})
    return module


def objective_tensors(module: nn.Module | None) -> dict[str, torch.Tensor]:
    if module is None:
        return {}
    return {PREFIX + name: t.detach().contiguous() for name, t in module.state_dict().items()}


def split_objective_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(the objective's tensors, without their prefix; everything else)."""
    own = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
    return own, {k: v for k, v in tensors.items() if not k.startswith(PREFIX)}


def load_objective_tensors(module: nn.Module | None, saved: dict | None, path: Path) -> None:
    if module is None:
        return
    if not saved:
        raise CheckpointError(f"checkpoint {path} holds no parameters of this objective",
                              "resume with the options the run was started with")
    module.load_state_dict(saved)

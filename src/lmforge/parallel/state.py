"""Whole (unsharded) model and optimizer state of a model that may be sharded by FSDP.

Checkpoints hold the state a single process would have: every weight whole, and the optimizer's state
keyed by parameter index as `Optimizer.state_dict()` keys it. So a run saved under FSDP on N ranks resumes
on any number of ranks, under FSDP, DDP or one process, and `lmforge convert` reads it like any run.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from lmforge.parallel.wrappers import is_sharded

# Gathered to rank 0's CPU memory (the other ranks get empty dicts), so no GPU holds a whole copy.
GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
# Every rank passes the whole state and keeps its own shard of it.
SCATTER = StateDictOptions(full_state_dict=True, strict=False)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict) whole. Under FSDP every rank must call it (it gathers the
    shards) and only rank 0's result holds anything."""
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict()
    weights = get_model_state_dict(model, options=GATHER)
    by_name = get_optimizer_state_dict(model, optimizer, options=GATHER)
    return weights, _by_index(by_name) if by_name else {}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optimizer_state: dict) -> None:
    """Load whole state dicts (as `full_state` returns them) into `model` and `optimizer`, sharded or not.
    Keys of tied weights that the checkpoint leaves out keep the tensor they share."""
    if not is_sharded(model):
        model.load_state_dict(weights, strict=False)
        optimizer.load_state_dict(optimizer_state)
        return
    set_model_state_dict(model, weights, options=SCATTER)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=_by_name(optimizer_state, optimizer, model),
                             options=SCATTER)


def _by_index(state: dict) -> dict:
    """An optimizer state dict keyed by parameter name (torch.distributed.checkpoint's form) keyed by index."""
    order = [name for group in state["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(order)}
    return {"state": {index[name]: values for name, values in state["state"].items()},
            "param_groups": [{**group, "params": [index[n] for n in group["params"]]}
                             for group in state["param_groups"]]}


def _by_name(state: dict, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    return {"state": {order[int(i)]: values for i, values in state["state"].items()},
            "param_groups": [{**group, "params": [order[i] for i in group["params"]]}
                             for group in state["param_groups"]]}

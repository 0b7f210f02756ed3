"""Transforms applied to a model from outside it, and the process groups they run in.

This package is the only part of lmforge that imports `torch.distributed`; models, data, the
trainer and inference see a `DistInfo` and the `apply_*` functions, never a process group.
Order of application (see `lmforge.train.trainer`): activation checkpointing -> compile -> DDP.
"""
from lmforge.parallel.distributed import (
                                          DistInfo,
                                          all_reduce_sum,
                                          broadcast_object,
                                          init_distributed,
                                          shutdown_distributed,
)
from lmforge.parallel.wrappers import apply_activation_checkpointing, apply_compile, apply_ddp, unwrap

__all__ = ["DistInfo", "all_reduce_sum", "apply_activation_checkpointing", "apply_compile", "apply_ddp",
           "broadcast_object", "init_distributed", "shutdown_distributed", "unwrap"]

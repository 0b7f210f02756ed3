"""Transforms applied to a model from outside it, and the process groups they run in.

This package is the only part of lmforge that imports `torch.distributed`; models, data, the
trainer and inference see a `DistInfo` and the `apply_*` functions, never a process group.
Order of application (see `lmforge.train.trainer`): activation checkpointing -> compile -> DDP or FSDP.
"""
from lmforge.parallel.distributed import (
                                          DistInfo,
                                          all_reduce_sum,
                                          barrier,
                                          broadcast_object,
                                          init_distributed,
                                          shutdown_distributed,
)
from lmforge.parallel.sharded import (check_shapes, checkpoint_group, is_complete, load_sharded, save_sharded,
                                      save_sharded_in_background)
from lmforge.parallel.state import full_state, load_full_state
from lmforge.parallel.wrappers import (apply_activation_checkpointing, apply_compile, apply_ddp, apply_fsdp,
                                       clip_grad_norm, is_sharded, materialize, on_meta_device, skip_gradient_sync,
                                       unwrap)

__all__ = ["DistInfo", "all_reduce_sum", "apply_activation_checkpointing", "apply_compile", "apply_ddp",
           "apply_fsdp", "barrier", "broadcast_object", "check_shapes", "clip_grad_norm", "full_state",
           "init_distributed", "is_complete", "is_sharded", "load_full_state", "load_sharded", "materialize",
           "on_meta_device", "save_sharded", "save_sharded_in_background", "checkpoint_group",
           "shutdown_distributed", "skip_gradient_sync", "unwrap"]

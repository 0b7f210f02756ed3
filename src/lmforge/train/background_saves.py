"""Sharded checkpoints written in the background (`--train.async_checkpoint`), so training does not wait on disk.

    save at step s: wait for the save before it and complete that one -> copy the state to CPU memory (DCP's
      async_save, on a process group of its own) -> training goes on while the shards are written
    completing a save (at the next save, or when training ends): every rank's shards are written -> barrier
      -> rank 0 adds the trainer state and the RNG captured at step s, renames the folder into place,
      publishes its config and prunes old checkpoints

A save becomes the newest checkpoint only once it is complete, so a process killed while one is in flight
resumes from the one before it, exactly as with synchronous saves; the only cost is that the newest
checkpoint on disk can be one interval older.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from lmforge.parallel import DistInfo, barrier, checkpoint_group, save_sharded_in_background
from lmforge.train import checkpoint as ckpt


class BackgroundSaves:
    def __init__(self, dist: DistInfo):
        self.dist = dist
        self.group = checkpoint_group()
        self.pending: tuple | None = None

    def save(self, path: Path, model: torch.nn.Module, optimizer, *, config: dict, state: dict,
             after: Callable[[], None]) -> None:
        """Start saving into `path` (see the module docstring); `after` runs on rank 0 once it is complete."""
        self.wait()
        tmp = ckpt.temporary_for(path) if self.dist.is_main else path.with_name(path.name + ".tmp")
        barrier(self.dist)
        future = save_sharded_in_background(tmp / ckpt.SHARDED, model, optimizer, self.group)
        self.pending = (future, tmp, path, config, state, ckpt.rng_state(), after)

    def wait(self) -> None:
        """Complete the save in flight, if any."""
        if self.pending is None:
            return
        future, tmp, path, config, state, rng, after = self.pending
        self.pending = None
        future.result()
        barrier(self.dist)
        if self.dist.is_main:
            ckpt.finish_sharded(tmp, path, config, state, rng=rng)
            after()
        barrier(self.dist)

"""Batches for language-model training and evaluation over a flat token array.

Random windows for training come from :class:`LMWindowLoader`, whose batch at
step ``k`` depends only on ``(seed, k)``; that makes resuming exact and lets
every distributed rank compute its slice of the global batch without talking
to the others. :func:`iter_eval_batches` gives fixed, non-overlapping windows
for validation loss.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from lmforge.errors import CheckpointError, ConfigError, DataError


def _check_length(tokens: np.ndarray, block_size: int) -> None:
    if len(tokens) < block_size + 1:
        raise DataError(
            f"dataset has {len(tokens)} tokens but the context length is {block_size}",
            "use a smaller --model.block_size or more data",
        )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}", f"pass {name} >= 1")


def _windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.asarray(tokens)[starts[:, None] + np.arange(block_size + 1)].astype(np.int64)  # (B, T+1)
    return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())


class LMWindowLoader:
    """Random ``(x, y)`` windows of ``block_size`` tokens, ``y`` being ``x`` shifted by one.

    ``batch_size`` is the per-rank micro-batch. Call number ``step`` draws the global
    batch of ``batch_size * world_size`` start offsets from
    ``np.random.default_rng([seed, step])`` (uniform in ``[0, len(tokens) - block_size - 1]``)
    and returns rows ``rank * batch_size`` to ``(rank + 1) * batch_size``: two ranks with
    batch ``b`` together see exactly the rows one process with batch ``2b`` sees.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        *,
        seed: int = 1337,
        rank: int = 0,
        world_size: int = 1,
    ):
        _check_positive(block_size=block_size, batch_size=batch_size, world_size=world_size)
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside [0, {world_size})", "launch with torchrun so RANK and WORLD_SIZE agree")
        _check_length(tokens, block_size)
        self.tokens = tokens
        self.block_size = int(block_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.step = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``(x, y)``: int64 tensors of shape ``(batch_size, block_size)``."""
        rng = np.random.default_rng([self.seed, self.step])
        starts = rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size * self.world_size)
        self.step += 1
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return _windows(self.tokens, mine, self.block_size)

    def row_generators(self) -> list[np.random.Generator]:
        """One Generator per row this rank builds at the current step: row ``j`` of the global batch
        draws from ``default_rng([seed, step, j])``, so a batch depends only on ``(seed, step)``."""
        rows = range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return [np.random.default_rng([self.seed, self.step, j]) for j in rows]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    @property
    def num_examples(self) -> int:
        """Non-overlapping windows: the examples of Poisson-sampled (DP) training."""
        return (len(self.tokens) - 1) // self.block_size

    def batch_of(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(x, y)` of the non-overlapping windows at `indices`, each (len(indices), block_size)."""
        starts = np.asarray(indices, dtype=np.int64) * self.block_size
        return _windows(self.tokens, starts, self.block_size)

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; the next batch is the one an uninterrupted loader would give."""
        try:
            step, seed = int(state["step"]), int(state["seed"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"data loader state {state!r} lacks an integer 'step' and 'seed'",
                "resume from a checkpoint written by lmforge, or start a fresh run",
            ) from None
        if step < 0:
            raise CheckpointError(f"data loader step {step} is negative", "resume from an intact checkpoint")
        self.step, self.seed = step, seed


def eval_generators(seed: int, first: int, count: int) -> list[np.random.Generator]:
    """Generators of validation examples ``first`` to ``first + count - 1``: example ``j`` draws from
    ``default_rng([seed, j])``, whatever the batch size."""
    return [np.random.default_rng([seed, first + j]) for j in range(count)]


def iter_eval_batches(
    tokens: np.ndarray,
    block_size: int,
    batch_size: int,
    max_batches: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic validation batches of contiguous, non-overlapping windows.

    Without ``max_batches`` every full window from the start is used once (the last
    batch may be smaller). With it, at most ``max_batches * batch_size`` windows are
    taken, spread evenly over the whole split rather than bunched at its start.
    """
    _check_positive(block_size=block_size, batch_size=batch_size)
    if max_batches is not None:
        _check_positive(max_batches=max_batches)
    _check_length(tokens, block_size)
    n_windows = (len(tokens) - 1) // block_size
    if max_batches is not None and max_batches * batch_size < n_windows:
        k = max_batches * batch_size
        picked = (np.arange(k) * n_windows) // k
    else:
        picked = np.arange(n_windows)
    starts = picked * block_size
    for i in range(0, len(starts), batch_size):
        yield _windows(tokens, starts[i : i + batch_size], block_size)

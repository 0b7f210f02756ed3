"""Key/value caches for incremental decoding: what a model reads from one, and the plain preallocated one.

A decoder is handed any object of the `AttentionCache` kind. Caches that lay keys out their own way
(per-request slots, fixed buffers of a compiled decode step) implement the same few members, so
the model never needs to know which cache it was given.
"""
from __future__ import annotations

import torch


class AttentionCache:
    """The members a model reads from a key/value cache during one forward pass.

    `length`: positions already cached before the new tokens; the new tokens continue from there
    unless explicit position ids say otherwise. `key_mask`: None, or a bool mask (B, 1, T, S)
    (True = attend) for a cache whose key layout differs from "cached tokens, then new tokens" in
    every row; the model then uses it in place of the causal and padding masks it would build.
    `update(layer, k, v)`: store the new keys/values (B, n_kv_head, T, hs) of `layer` and return all
    keys/values the new queries attend to, (B, n_kv_head, S, hs).
    """

    length: int
    key_mask: torch.Tensor | None = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement update")


class KVCache(AttentionCache):
    """Preallocated keys/values for every layer: (n_layer, B, n_kv_head, max_len, hs).

    `length` counts positions already written. Writing past `max_len` is an error
    rather than a silent reallocation, so memory use is known up front.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v (B, n_kv, T, hs) at the current position; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked for {end}")
        # Layer first: a subclass may hold `k`/`v` as a list of per-layer tensors instead of one stacked tensor.
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (beam search, dropping finished requests)."""
        self.k = self.k[:, index]
        self.v = self.v[:, index]

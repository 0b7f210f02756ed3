"""A key/value cache of fixed-size slots shared by many concurrent requests.

Each running request owns one slot: a preallocated stretch of `max_len` positions in every layer,
so the whole cache is two tensors of shape (n_layer, n_slots, n_kv_head, max_len, head_dim) whose
size is known before the first request arrives (`nbytes`, `bytes_needed`). Admission control is
therefore simple: a request fits when a slot is free and its prompt plus its new tokens fit in
`max_len` (`can_admit`).

A batched forward pass sees the cache through a `SlotBatch`: an object with the `length` /
`update(layer, k, v)` interface of the single-batch `KVCache`, built for one set of rows. Row i
continues slot `slots[i]`, which already holds `past[i]` positions, with `new[i]` tokens. Rows
are laid out right-aligned (left padding), exactly as batched generation lays out prompts of
different lengths: the new tokens end in the last query column and each row's cached + new keys
end in the last key column. Then the usual causal mask, combined with a per-row padding mask
(`attention_mask`), lets every row attend to its own cached tokens and nothing else, and position
ids carry each row's true positions.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.models.common.cache import AttentionCache


class SlotKVCache:
    """Keys/values for `n_slots` requests of up to `max_len` tokens each, with per-slot lengths."""

    def __init__(self, n_layer: int, n_slots: int, n_kv_head: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        for name, value in (("n_layer", n_layer), ("n_slots", n_slots), ("n_kv_head", n_kv_head),
                            ("max_len", max_len), ("head_dim", head_dim)):
            if value <= 0:
                raise ConfigError(f"KV cache {name} must be positive, got {value}", f"pass a positive {name}")
        shape = (n_layer, n_slots, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.n_layer, self.n_slots, self.n_kv_head, self.max_len, self.head_dim = shape
        self.lengths: list[int] = [0] * n_slots
        self._in_use = [False] * n_slots
        # Lowest free slot first, so a freed slot is the next one handed out.
        self._free: list[int] = list(range(n_slots))

    @classmethod
    def for_model(cls, model: nn.Module, n_slots: int, max_len: int | None = None, *,
                  dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "SlotKVCache":
        """A cache shaped for decoder `model` (its layers, KV heads and head size)."""
        cfg = model.config
        ref = next(model.parameters())
        return cls(cfg.n_layer, n_slots, cfg.n_kv_head, max_len or cfg.block_size, cfg.head_dim,
                   dtype=dtype or ref.dtype, device=device or ref.device)

    @staticmethod
    def bytes_needed(n_layer: int, n_slots: int, n_kv_head: int, max_len: int, head_dim: int,
                     dtype: torch.dtype = torch.float32) -> int:
        """Bytes of keys plus values: 2 * n_layer * n_slots * n_kv_head * max_len * head_dim * itemsize."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * n_layer * n_slots * n_kv_head * max_len * head_dim * itemsize

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @property
    def dtype(self) -> torch.dtype:
        return self.k.dtype

    @property
    def device(self) -> torch.device:
        return self.k.device

    # ------------------------------------------------------------ slots
    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def used_slots(self) -> int:
        return self.n_slots - len(self._free)

    @property
    def used_tokens(self) -> int:
        """Positions written across all slots in use."""
        return sum(n for n, used in zip(self.lengths, self._in_use) if used)

    def fits(self, num_tokens: int) -> bool:
        """Whether a request of `num_tokens` (prompt + new tokens) could ever fit in one slot."""
        return 0 < num_tokens <= self.max_len

    def can_admit(self, num_tokens: int) -> bool:
        """Whether a request of `num_tokens` (prompt + new tokens) fits now."""
        return self.fits(num_tokens) and bool(self._free)

    def allocate(self) -> int:
        """Take a free slot (emptied); raises when none is free."""
        if not self._free:
            raise RuntimeError(f"all {self.n_slots} KV cache slots are in use")
        slot = self._free.pop(0)
        self._in_use[slot] = True
        self.lengths[slot] = 0
        return slot

    def free(self, slot: int) -> None:
        """Give `slot` back; its stale keys/values stay until the next owner overwrites them."""
        if not 0 <= slot < self.n_slots or not self._in_use[slot]:
            raise ValueError(f"slot {slot} is not in use")
        self._in_use[slot] = False
        self.lengths[slot] = 0
        self._free.append(slot)
        self._free.sort()

    # ------------------------------------------------------------ batched access
    def batch(self, slots: list[int], new: list[int]) -> "SlotBatch":
        """A view for one forward pass: row i appends `new[i]` tokens to slot `slots[i]`."""
        return SlotBatch(self, slots, [self.lengths[s] for s in slots], new)

    def commit(self, batch: "SlotBatch") -> None:
        """Count the tokens a finished forward pass wrote."""
        for slot, n in zip(batch.slots, batch.new):
            self.lengths[slot] += n


class SlotBatch(AttentionCache):
    """One forward pass's view of a `SlotKVCache`, usable wherever a `KVCache` is.

    Attributes for the model call: `length` (cached columns before the new ones, S - T),
    `attention_mask` (B, S) or None when no row is padded, `position_ids` (B, T).
    """

    def __init__(self, cache: SlotKVCache, slots: list[int], past: list[int], new: list[int]):
        if not slots or len(slots) != len(past) or len(slots) != len(new) or len(set(slots)) != len(slots):
            raise ValueError("a batch needs one distinct slot per row and a past and new length for each")
        if any(n <= 0 for n in new):
            raise ValueError("every row must bring at least one new token")
        if any(p + n > cache.max_len for p, n in zip(past, new)):
            raise ValueError(f"a row would exceed its slot of {cache.max_len} positions")
        self.cache, self.slots, self.past, self.new = cache, list(slots), list(past), list(new)
        device = cache.device
        B = len(slots)
        T = max(new)
        S = max(p + n for p, n in zip(past, new))
        self.width, self.total = T, S
        self.length = S - T
        total = torch.tensor([p + n for p, n in zip(past, new)], device=device)
        new_t = torch.tensor(new, device=device)
        past_t = torch.tensor(past, device=device)
        offset = S - total  # pad columns before each row's first key
        aligned = bool((offset == 0).all()) and bool((new_t == T).all())
        self.attention_mask = None if aligned else torch.arange(S, device=device)[None] >= offset[:, None]
        # Query column t of row i is its token number past + t - (T - new); pads clamp to 0.
        self.position_ids = (past_t[:, None] + torch.arange(T, device=device)[None] - (T - new_t)[:, None]).clamp(min=0)

        # Where each real new token goes: (row, query column) -> (slot, position).
        rows = torch.repeat_interleave(torch.arange(B, device=device), new_t)
        first = torch.repeat_interleave(torch.cumsum(new_t, 0) - new_t, new_t)
        step = torch.arange(int(new_t.sum()), device=device) - first
        self._write_rows, self._write_cols = rows, (T - new_t)[rows] + step
        slot_t = torch.tensor(slots, device=device)
        self._write_slots, self._write_pos = slot_t[rows], past_t[rows] + step
        # Nothing cached yet: the new keys are all there is to attend to, no gather needed.
        self._fresh = all(p == 0 for p in past)
        self.key_mask = None
        # Decode-only steps read each row's keys where its slot holds them (row i: positions 0..total_i-1)
        # instead of gathering them into left-padded columns: a slice of the cache, or one copy per slot.
        self._in_place = not self._fresh and T == 1
        if self._in_place:
            self.attention_mask = None
            if not bool((total == S).all()):
                self.key_mask = (torch.arange(S, device=device)[None] < total[:, None])[:, None, None, :]
            self._read_slots = slot_t
            first_slot = slots[0]
            self._contiguous = slots == list(range(first_slot, first_slot + B))
        elif not self._fresh:
            # Key column c of row i reads slot position c - offset[i] (pads read position 0, masked).
            self._read_slots = slot_t[:, None]
            self._read_pos = (torch.arange(S, device=device)[None] - offset[:, None]).clamp(min=0)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the real new keys/values (B, n_kv, T, hs) in their slots; return (B, n_kv, S, hs)."""
        ck, cv = self.cache.k[layer], self.cache.v[layer]
        # Under autocast k/v may be in a lower precision than the cache; store them as the cache does.
        ck[self._write_slots, :, self._write_pos] = k[self._write_rows, :, self._write_cols].to(ck.dtype)
        cv[self._write_slots, :, self._write_pos] = v[self._write_rows, :, self._write_cols].to(cv.dtype)
        if self._fresh:
            return k, v
        if self._in_place:
            S = self.total
            if self._contiguous:
                first = self.slots[0]
                return ck[first:first + len(self.slots), :, :S], cv[first:first + len(self.slots), :, :S]
            return ck[self._read_slots, :, :S], cv[self._read_slots, :, :S]
        # Advanced indexing puts the (B, S) index dims first: (B, S, n_kv, hs).
        keys = ck[self._read_slots, :, self._read_pos].transpose(1, 2)
        values = cv[self._read_slots, :, self._read_pos].transpose(1, 2)
        return keys, values

    def advance(self, n: int) -> None:
        raise TypeError("a SlotBatch is advanced per row by SlotKVCache.commit, not by a uniform length")

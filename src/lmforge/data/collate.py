"""Padded encoder-decoder batches of given ``(source_ids, target_ids)`` pairs (translation,
summarisation, span corruption), and the loader that draws them.

Masked-LM inputs are built in :mod:`~lmforge.data.masking` and
:mod:`~lmforge.data.mlm_pretraining`, T5 span corruption in :mod:`~lmforge.data.span_corruption`.
"""
from __future__ import annotations

import numpy as np
import torch

from lmforge.data.loaders import LMWindowLoader
from lmforge.errors import ConfigError, DataError

IGNORE_INDEX = -100  # labels at this value carry no loss (PyTorch's cross-entropy default)


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: ``start_id`` followed by the labels but the last
    (ignored positions become ``pad_id``), as T5 and BART build them."""
    shifted = torch.full_like(labels, start_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_id)


def collate_seq2seq(pairs, *, pad_id: int, decoder_start_id: int) -> dict[str, torch.Tensor]:
    """Right-padded encoder-decoder batch from ``(source_ids, target_ids)`` pairs.

    ``input_ids`` and ``attention_mask`` (B, S); ``labels`` (B, T), IGNORE_INDEX past each target;
    ``decoder_input_ids`` the labels shifted right behind ``decoder_start_id``.
    """
    pairs = [(np.asarray(s, dtype=np.int64), np.asarray(t, dtype=np.int64)) for s, t in pairs]
    if not pairs or any(len(s) == 0 or len(t) == 0 for s, t in pairs):
        raise DataError("a sequence-to-sequence example has an empty source or target",
                        "drop empty examples from the data")
    S, T = max(len(s) for s, _ in pairs), max(len(t) for _, t in pairs)
    input_ids = np.full((len(pairs), S), pad_id, dtype=np.int64)
    attention = np.zeros((len(pairs), S), dtype=np.int64)
    labels = np.full((len(pairs), T), IGNORE_INDEX, dtype=np.int64)
    for i, (s, t) in enumerate(pairs):
        input_ids[i, :len(s)], attention[i, :len(s)], labels[i, :len(t)] = s, 1, t
    labels = torch.from_numpy(labels)
    return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention),
            "decoder_input_ids": shift_right(labels, decoder_start_id, pad_id), "labels": labels}


class Seq2SeqLoader:
    """Resumable, rank-sliced batches of given ``(source_ids, target_ids)`` pairs (translation,
    summarisation): the global batch at step ``k`` draws its examples with
    ``np.random.default_rng([seed, k])`` and rank ``r`` keeps rows ``r * B`` to ``(r + 1) * B``;
    sources and targets longer than ``max_source_length`` / ``max_target_length`` are cut.
    See :func:`collate_seq2seq` for the batch layout.
    """

    def __init__(self, pairs, batch_size: int, *, pad_id: int, decoder_start_id: int,
                 max_source_length: int | None = None, max_target_length: int | None = None, seed: int = 1337,
                 rank: int = 0, world_size: int = 1):
        if len(pairs) == 0:
            raise DataError("no sequence-to-sequence examples", "pass at least one (source, target) pair")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}", "pass batch_size >= 1")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside [0, {world_size})", "launch with torchrun so RANK and "
                              "WORLD_SIZE agree")
        self.batch_size, self.seed, self.rank, self.world_size = int(batch_size), int(seed), int(rank), int(world_size)
        self.step = 0
        self.pairs = pairs
        self.pad_id, self.decoder_start_id = pad_id, decoder_start_id
        self.max_source_length, self.max_target_length = max_source_length, max_target_length

    def next_batch(self) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.step])
        picked = rng.integers(0, len(self.pairs), size=self.batch_size * self.world_size)
        self.step += 1
        mine = picked[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return collate_seq2seq([self._cut(self.pairs[i]) for i in mine], pad_id=self.pad_id,
                               decoder_start_id=self.decoder_start_id)

    def _cut(self, pair):
        source, target = pair
        return source[:self.max_source_length], target[:self.max_target_length]

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed}

    load_state_dict = LMWindowLoader.load_state_dict  # the same checks of a saved cursor

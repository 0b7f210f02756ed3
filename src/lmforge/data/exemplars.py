"""Few-shot exemplar selection: which training examples go into a prompt, and in what order.

Selection (`how`):
    random     k examples drawn uniformly with the seed;
    balanced   round-robin over the labels (each label's examples shuffled with the seed), so k >= the number
               of labels shows every label;
    nearest    the k examples most similar to the query (cosine similarity of sentence embeddings, e.g. from
               the all-MiniLM-L6-v2 encoder), as in Liu et al. (2022), "What makes good in-context examples".
Order (`order`):
    random         shuffled with the seed;
    nearest_last   least similar first, so the most similar exemplar sits right before the query;
    nearest_first  most similar first.
The two `nearest_*` orders need the query's similarities, whatever the selection.
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

import torch

from lmforge.errors import ConfigError

SELECTIONS = ("random", "balanced", "nearest")
ORDERS = ("random", "nearest_last", "nearest_first")


def check_selection(how: str, order: str, k: int, pool_size: int) -> None:
    """The user mistakes, found before anything is scored."""
    if how not in SELECTIONS:
        raise ConfigError(f"unknown exemplar selection {how!r}", f"use one of: {', '.join(SELECTIONS)}")
    if order not in ORDERS:
        raise ConfigError(f"unknown exemplar order {order!r}", f"use one of: {', '.join(ORDERS)}")
    if k > pool_size:
        raise ConfigError(f"{k} shots asked for but the training file has {pool_size} examples",
                          "ask for fewer shots or pass a larger --train file")


def needs_similarity(how: str, order: str) -> bool:
    return how == "nearest" or order != "random"


def select_exemplars(pool: Sequence[dict], k: int, seed: int, label_of: Callable[[dict], str], *,
                     how: str = "random", order: str = "random",
                     similarity: torch.Tensor | None = None) -> list[dict]:
    """`k` examples of `pool` for one query (see the module docstring); `similarity` (len(pool),) holds the
    query's cosine similarity to each pool example, needed by `nearest` and the `nearest_*` orders."""
    check_selection(how, order, k, len(pool))
    if needs_similarity(how, order) and similarity is None:
        raise ConfigError(f"exemplar selection {how!r} with order {order!r} ranks by similarity to the query",
                          "pass an encoder run (--encoder) to embed the examples")
    rng = random.Random(seed)
    if how == "random":
        picked = rng.sample(range(len(pool)), k)
    elif how == "balanced":
        by_label: dict[str, list[int]] = {}
        for i, example in enumerate(pool):
            by_label.setdefault(label_of(example), []).append(i)
        groups = [rng.sample(g, len(g)) for _, g in sorted(by_label.items())]
        picked = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)][:k]
    else:
        # Ties go to the earlier pool example, so a selection never depends on the sort's stability.
        picked = sorted(range(len(pool)), key=lambda i: (-float(similarity[i]), i))[:k]
    if order == "random":
        rng.shuffle(picked)
    else:
        picked.sort(key=lambda i: (float(similarity[i]), -i), reverse=order == "nearest_first")
    return [pool[i] for i in picked]

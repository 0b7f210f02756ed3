"""Splitting a training set among federated clients: IID shards, or label-skewed (non-IID) shards whose
per-class shares are drawn from a Dirichlet distribution.

Dirichlet(alpha) split (Hsu et al., 2019): for every class c, the shares p_c ~ Dir(alpha, ..., alpha) over
the clients say which fraction of c's examples each client gets. Small alpha (0.1) gives each client mostly
one class; large alpha (100) approaches an IID split. A draw that leaves a client with no example is redrawn.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from lmforge.errors import ConfigError

PARTITIONS = ("iid", "dirichlet")
MAX_DRAWS = 1000


def partition_indices(labels: Sequence[Hashable], clients: int, *, how: str = "iid", alpha: float = 0.5,
                      seed: int = 0) -> list[list[int]]:
    """Indices of `labels` (one label per example) for each of `clients` shards: disjoint, covering every
    example, each shard non-empty and sorted."""
    n = len(labels)
    if how not in PARTITIONS:
        raise ConfigError(f"unknown partition {how!r}", f"use one of {', '.join(PARTITIONS)}")
    if clients < 1:
        raise ConfigError(f"clients must be at least 1, got {clients}", "pass --clients 2 or more")
    if clients > n:
        raise ConfigError(f"{clients} clients but only {n} training examples: a client would have no data",
                          f"pass --clients {n} or fewer")
    rng = np.random.default_rng(seed)
    if how == "iid":
        order = rng.permutation(n)
        return [sorted(int(i) for i in part) for part in np.array_split(order, clients)]
    if not alpha > 0:
        raise ConfigError(f"alpha must be positive, got {alpha}", "pass e.g. --alpha 0.5 (smaller: more skewed)")
    by_class: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    for _ in range(MAX_DRAWS):
        shards = _dirichlet_draw(by_class, clients, alpha, rng)
        if all(shards):
            return [sorted(s) for s in shards]
    raise ConfigError(f"no Dirichlet(alpha={alpha:g}) split in {MAX_DRAWS} draws gave each of {clients} clients an "
                      f"example ({n} examples)", "pass a larger --alpha or fewer --clients")


def _dirichlet_draw(by_class: dict, clients: int, alpha: float, rng: np.random.Generator) -> list[list[int]]:
    shards: list[list[int]] = [[] for _ in range(clients)]
    for members in by_class.values():
        members = rng.permutation(members)
        shares = rng.dirichlet(np.full(clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).round().astype(int)
        for client, part in enumerate(np.split(members, cuts)):
            shards[client].extend(int(i) for i in part)
    return shards


def label_counts(labels: Sequence[Hashable], shards: list[list[int]]) -> list[dict[str, int]]:
    """Each shard's examples per label, for the run's record of how skewed the split is."""
    out = []
    for shard in shards:
        counts: dict[str, int] = {}
        for i in shard:
            counts[str(labels[i])] = counts.get(str(labels[i]), 0) + 1
        out.append(dict(sorted(counts.items())))
    return out

"""How faithful token scores are to the model (DeYoung et al. 2020, ERASER): delete the top-scored k% of the
tokens and see how much the target's probability drops (comprehensiveness), keep only them and see how much
it drops (sufficiency), each beside the same for k% of the tokens picked at random.

Scores and positions index one input of T tokens; special tokens are never deleted.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from lmforge.explain.subject import Subject


def top_positions(scores: torch.Tensor, special: list[bool], fraction: float) -> list[int]:
    """The ceil(fraction * n) highest-scoring of the n non-special positions."""
    candidates = [i for i, s in enumerate(special) if not s]
    k = max(1, math.ceil(fraction * len(candidates)))
    return sorted(sorted(candidates, key=lambda i: -float(scores[i]))[:k])


def random_positions(special: list[bool], fraction: float, rng: np.random.Generator) -> list[int]:
    candidates = [i for i, s in enumerate(special) if not s]
    k = max(1, math.ceil(fraction * len(candidates)))
    return sorted(int(i) for i in rng.choice(candidates, size=k, replace=False))


def _without(ids: torch.Tensor, drop: list[int]) -> torch.Tensor:
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[drop] = False
    return ids[:, keep]


def _only(ids: torch.Tensor, kept: list[int], special: list[bool]) -> torch.Tensor:
    keep = torch.tensor(special, dtype=torch.bool)
    keep[kept] = True
    return ids[:, keep]


def erasures(subject: Subject, position_sets: list[list[int]]) -> list[dict]:
    """Per set of positions: F(x) - F(x without them) (comprehensiveness) and F(x) - F(only them and the special
    tokens) (sufficiency). Sets of one size give inputs of one length, so each kind is one batched forward."""
    ids = subject.input_ids
    without = torch.cat([_without(ids, p) for p in position_sets])  # (n, T - k)
    only = torch.cat([_only(ids, p, subject.special) for p in position_sets])
    with torch.no_grad():
        full = float(subject.score(ids)[0])
        f_without, f_only = subject.score(without).tolist(), subject.score(only).tolist()
    return [{"comprehensiveness": full - a, "sufficiency": full - b} for a, b in zip(f_without, f_only)]


def erasure(subject: Subject, positions: list[int]) -> dict:
    return erasures(subject, [positions])[0]


def random_erasure(subject: Subject, fraction: float, rng: np.random.Generator, draws: int = 5) -> dict:
    """Comprehensiveness and sufficiency of `fraction` of the tokens picked at random, averaged over `draws`."""
    found = erasures(subject, [random_positions(subject.special, fraction, rng) for _ in range(draws)])
    return {f"random_{k}": float(np.mean([d[k] for d in found])) for k in ("comprehensiveness", "sufficiency")}


def erasure_report(subject: Subject, scores: dict[str, torch.Tensor], fraction: float,
                   rng: np.random.Generator, random_draws: int = 5) -> dict:
    """{method: comprehensiveness and sufficiency of its top `fraction` by score, beside the same for as many
    random tokens (one set of random draws for every method)}."""
    chosen = erasures(subject, [top_positions(s, subject.special, fraction) for s in scores.values()])
    baseline = random_erasure(subject, fraction, rng, random_draws)
    return {method: {**found, **baseline} for method, found in zip(scores, chosen)}


def rank_correlation(a: torch.Tensor, b: torch.Tensor, special: list[bool]) -> float | None:
    """Spearman's rho between two methods' scores over the non-special tokens (None when undefined)."""
    from scipy.stats import spearmanr  # slow to import; only `explain eval` ranks

    keep = [i for i, s in enumerate(special) if not s]
    if len(keep) < 3:
        return None
    rho = spearmanr(a[keep].numpy(), b[keep].numpy()).statistic
    return None if np.isnan(rho) else float(rho)

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


def erasure(subject: Subject, positions: list[int]) -> dict:
    """F(x) - F(x without `positions`) (comprehensiveness) and F(x) - F(only `positions`) (sufficiency)."""
    ids = subject.input_ids
    with torch.no_grad():
        full = float(subject.score(ids)[0])
        without = float(subject.score(_without(ids, positions))[0])
        only = float(subject.score(_only(ids, positions, subject.special))[0])
    return {"comprehensiveness": full - without, "sufficiency": full - only}


def erasure_report(subject: Subject, scores: torch.Tensor, fraction: float, rng: np.random.Generator,
                   random_draws: int = 5) -> dict:
    """Comprehensiveness and sufficiency of the top `fraction` by `scores` and, averaged over `random_draws`
    draws, of as many random tokens."""
    ours = erasure(subject, top_positions(scores, subject.special, fraction))
    draws = [erasure(subject, random_positions(subject.special, fraction, rng)) for _ in range(random_draws)]
    return {**ours, "random_comprehensiveness": float(np.mean([d["comprehensiveness"] for d in draws])),
            "random_sufficiency": float(np.mean([d["sufficiency"] for d in draws]))}


def rank_correlation(a: torch.Tensor, b: torch.Tensor, special: list[bool]) -> float | None:
    """Spearman's rho between two methods' scores over the non-special tokens (None when undefined)."""
    from scipy.stats import spearmanr  # slow to import; only `explain eval` ranks

    keep = [i for i, s in enumerate(special) if not s]
    if len(keep) < 3:
        return None
    rho = spearmanr(a[keep].numpy(), b[keep].numpy()).statistic
    return None if np.isnan(rho) else float(rho)

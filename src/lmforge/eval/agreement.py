"""How closely a compressed model follows its original, and how fast it runs.

Agreement compares two models' output distributions on the same inputs: the fraction of positions
where their top-1 choices match, and the mean KL divergence KL(original || compressed). Latency is
the median wall time of a call after warm-up calls, which is what a user waiting on one request sees;
several models are timed in turns.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F


def agreement(reference: torch.Tensor, candidate: torch.Tensor) -> dict:
    """Top-1 agreement and mean KL(reference || candidate) over rows of logits (..., classes)."""
    ref, cand = reference.float().reshape(-1, reference.shape[-1]), candidate.float().reshape(-1, candidate.shape[-1])
    if ref.shape != cand.shape:
        raise ValueError(f"logits of different shapes: {tuple(ref.shape)} and {tuple(cand.shape)}")
    log_ref, log_cand = F.log_softmax(ref, dim=-1), F.log_softmax(cand, dim=-1)
    kl = F.kl_div(log_cand, log_ref, log_target=True, reduction="sum") / max(1, ref.shape[0])
    return {"top1_agreement": float((ref.argmax(-1) == cand.argmax(-1)).float().mean()), "kl": float(kl)}


def interleaved_latency(calls: list[Callable[[], object]], *, warmup: int = 3, repeats: int = 20) -> list[float]:
    """Median seconds per call of each of `calls`, timed in turns (one call of each per round) after `warmup`
    untimed rounds: a change in the machine's load during the measurement then falls on every call alike."""
    times: list[list[float]] = [[] for _ in calls]
    with torch.inference_mode():
        for _ in range(warmup):
            for call in calls:
                call()
        for _ in range(repeats):
            for spent, call in zip(times, calls):
                start = time.perf_counter()
                call()
                spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]

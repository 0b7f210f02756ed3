"""Agreement between a model and its compressed variant against hand computations, and timing in turns."""
import math

import pytest
import torch

from lmforge.eval.agreement import agreement, interleaved_latency


def test_agreement_matches_a_hand_computation():
    reference = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    candidate = torch.tensor([[1.0, 0.2, -1.0], [1.0, 0.0, 0.0]])
    kl = 0.0
    for r, c in zip(reference.tolist(), candidate.tolist()):
        zr, zc = sum(map(math.exp, r)), sum(map(math.exp, c))
        kl += sum(math.exp(a) / zr * (a - math.log(zr) - b + math.log(zc)) for a, b in zip(r, c))
    figures = agreement(reference, candidate)
    assert figures["top1_agreement"] == 0.5  # row 0 agrees on class 0; row 1: 1 against 0
    assert figures["kl"] == pytest.approx(kl / 2, rel=1e-6)
    assert agreement(reference, reference) == {"top1_agreement": 1.0, "kl": pytest.approx(0.0, abs=1e-7)}


def test_calls_are_timed_in_turns_after_the_warm_up():
    order = []
    seconds = interleaved_latency([lambda: order.append("a"), lambda: order.append("b")], warmup=1, repeats=3)
    assert order == ["a", "b"] * 4 and len(seconds) == 2 and all(s >= 0 for s in seconds)

"""Zero- and few-shot classification by label likelihood, with contextual calibration.

Each label's verbaliser is scored after the prompt (the summed log-probability of its tokens, as
lm-evaluation-harness scores a multiple-choice answer: the prompt and the prompt + delimiter + verbaliser are
encoded, and the verbaliser's tokens are those past the prompt's), and the label scored highest is the
prediction. All (prompt, label) pairs go through one batched scoring pass.

Contextual calibration (Zhao et al., 2021, "Calibrate before use"): the label probabilities the model
gives a content-free input ("N/A", "", "[MASK]") under the same exemplars measure its bias towards some
labels; each prediction's probabilities are divided by them (W = diag(p_cf)^-1, b = 0) and renormalised.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from lmforge.infer.scoring import score_sequences

CONTENT_FREE = ("N/A", "", "[MASK]")


def label_pairs(tokenizer, prompt: str, verbalizers: Sequence[str], delimiter: str) -> list[tuple[list[int], int]]:
    """(token ids of prompt + delimiter + verbaliser, number of verbaliser tokens) per label."""
    context = tokenizer.encode(prompt)
    pairs = []
    for verbalizer in verbalizers:
        whole = tokenizer.encode(prompt + delimiter + verbalizer)
        pairs.append((whole, len(whole) - len(context)))
    return pairs


def label_logprobs(model: nn.Module, tokenizer, prompts: Sequence[str], verbalizers: Sequence[str], *,
                   delimiter: str = " ", max_batch_tokens: int = 4096) -> torch.Tensor:
    """(N prompts, L labels) summed log-probability of each label's verbaliser after each prompt."""
    pairs = [p for prompt in prompts for p in label_pairs(tokenizer, prompt, verbalizers, delimiter)]
    scored = score_sequences(model, [ids for ids, _ in pairs], max_batch_tokens=max_batch_tokens)
    totals = [s.total(len(ids) - n) for s, (ids, n) in zip(scored, pairs)]
    return torch.tensor(totals, dtype=torch.float64).view(len(prompts), len(verbalizers))


def label_probabilities(logprobs: torch.Tensor) -> torch.Tensor:
    """(N, L) label log-likelihoods -> probabilities normalised over the labels."""
    return torch.softmax(logprobs, dim=-1)


def calibrate(probs: torch.Tensor, content_free: torch.Tensor) -> torch.Tensor:
    """(N, L) label probabilities rescaled by the mean (over rows) of `content_free` (C, L) label probabilities,
    then renormalised: softmax(W p) with W = diag(p_cf)^-1, as in Zhao et al. (2021)."""
    p_cf = content_free.mean(dim=0)
    p_cf = p_cf / p_cf.sum()
    return torch.softmax(probs / p_cf, dim=-1)

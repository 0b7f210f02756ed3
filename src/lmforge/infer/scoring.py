"""Log-likelihood scoring: the log-probability a decoder gives each token of a text, given the tokens before it.

This is what evaluation by likelihood needs (multiple-choice answers compared by their summed
log-probability, `echo` + `logprobs` on the completions endpoint, lm-evaluation-harness's
`loglikelihood` requests): one forward pass over the whole sequence, `log_softmax` over the
vocabulary and a gather of each next token, instead of generating. Sequences are batched by length
(longest first, right-padded: a causal model's positions never see the padding after them), under a
budget of padded tokens per forward pass.

Scores are those of the model's own distribution (the softmax of its raw logits, at temperature 1
and without any sampling filter), whatever the sampling settings of a request.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.models.registry import traits_of


@dataclass
class TokenLogprob:
    """One token's score: its log-probability, whether it was the model's most likely token there, and the
    `top` most likely tokens at that position as (token id, log-probability), best first."""

    token_id: int
    logprob: float
    is_top: bool
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class SequenceScores:
    """The scores of one sequence: `scores[i]` is token i's given tokens[:i]; the first token has none (None)."""

    token_ids: list[int]
    scores: list[TokenLogprob | None]

    def total(self, start: int = 1) -> float:
        """Summed log-probability of tokens[start:] (start >= 1): a continuation's log-likelihood."""
        return sum(s.logprob for s in self.scores[max(start, 1):])

    def all_top(self, start: int = 1) -> bool:
        """Whether every token from `start` on is the model's most likely one: greedy decoding would produce them."""
        return all(s.is_top for s in self.scores[max(start, 1):])


def pick_logprobs(logits: torch.Tensor, targets: torch.Tensor, top_k: int = 0) -> list[TokenLogprob]:
    """The score of `targets` (N,) under `logits` (N, V), with the `top_k` best alternatives of each row."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    chosen = logprobs.gather(-1, targets[:, None]).squeeze(-1)  # (N,)
    is_top = logprobs.argmax(dim=-1) == targets  # (N,)
    best_lp, best_ids = (logprobs.topk(top_k, dim=-1) if top_k > 0
                         else (logprobs[:, :0], targets[:, None][:, :0]))  # (N, k)
    best = [list(zip(ids, lps)) for ids, lps in zip(best_ids.tolist(), best_lp.tolist())]
    return [TokenLogprob(t, lp, top, b) for t, lp, top, b in zip(targets.tolist(), chosen.tolist(), is_top.tolist(),
                                                                   best)]


def check_scorable(model: nn.Module, sequences: Sequence[Sequence[int]], top_k: int) -> int:
    """The longest sequence `model` can score (its context length + 1: the last token is only predicted,
    never read); raises for anything it cannot score."""
    structure = traits_of(model).structure
    if structure != "decoder":
        raise ConfigError(f"{model.family} is an {structure} family: it does not predict a text's next token",
                          "score with a decoder (GPT-family) model")
    config = model.config
    longest, vocab = config.block_size + 1, config.vocab_size
    if not 0 <= top_k <= vocab:
        raise ConfigError(f"top_k must be in [0, {vocab}], got {top_k}", "pass e.g. top_k=5")
    for i, ids in enumerate(sequences):
        if not ids:
            raise ConfigError(f"sequence {i} is empty", "pass at least one token per sequence")
        if len(ids) > longest:
            raise ConfigError(f"sequence {i} has {len(ids)} tokens but the model scores at most {longest} "
                              f"(its context length {config.block_size} + 1)", "shorten it from the left")
        if min(ids) < 0 or max(ids) >= vocab:
            raise ConfigError(f"sequence {i} holds token ids outside [0, {vocab})",
                              "encode it with the model's tokenizer")
    return longest


def length_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches, longest first, each holding at most `max_batch_tokens` padded tokens
    (a sequence longer than that runs alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= max_batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def score_sequences(model: nn.Module, sequences: Sequence[Sequence[int]], *, top_k: int = 0,
                    max_batch_tokens: int = 4096) -> list[SequenceScores]:
    """Every token's log-probability given the tokens before it, for each of `sequences` (token ids), in order.

    `top_k` > 0 also gives the k most likely tokens at each position. A sequence may be one token longer than
    the model's context (its last token is predicted, never read)."""
    sequences = [[int(t) for t in s] for s in sequences]
    check_scorable(model, sequences, top_k)
    out: list[SequenceScores | None] = [None] * len(sequences)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in length_batches([len(s) for s in sequences], max_batch_tokens):
                for i, scores in zip(batch, _score_batch(model, [sequences[i] for i in batch], top_k, device)):
                    out[i] = scores
    finally:
        model.train(was_training)
    return out


def _score_batch(model: nn.Module, rows: list[list[int]], top_k: int, device) -> list[SequenceScores]:
    width = max(len(r) for r in rows)
    if width == 1:
        return [SequenceScores(r, [None]) for r in rows]
    ids = torch.zeros(len(rows), width, dtype=torch.long)  # right padding: no real position attends to it
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.tensor(r)
    ids = ids.to(device)
    logits = model(ids[:, :-1])  # (B, width - 1, V); position j predicts token j + 1
    results = []
    for b, r in enumerate(rows):
        n = len(r) - 1
        scored = pick_logprobs(logits[b, :n], ids[b, 1:n + 1], top_k) if n else []
        results.append(SequenceScores(r, [None, *scored]))
    return results

"""The batched decode loop behind `lmforge.infer.generate`.

Prompts of different lengths are left-padded into one batch so that every row's next token sits
in the same (last) column; an attention mask hides the pads and position ids count real tokens
only. Keys/values live in a cache preallocated for prompt + new tokens, so each decode step feeds
one token per row and allocates no new cache memory.

A step samples one token per row, writes it into the batch, reports it (stream callback, end of
text, stop strings) and, unless every row has finished or the last step is reached, runs the
model on it to get the next step's logits. Rows that finished keep being fed pad tokens until
the whole batch is done; their results are cut to their valid length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from lmforge.infer.compiled import CompiledDecoder
from lmforge.infer.sampling import SamplingParams, apply_repetition_penalty, ban_repeated_ngrams, sample_next
from lmforge.infer.stops import has_stop

StreamFn = Callable[[int, int], None]


def decode_rows(model: nn.Module, rows: list[list[int]], params: SamplingParams, eos_id: int | None, tokenizer,
                stream: StreamFn | None, use_cache: bool, compiled_step=None
                ) -> tuple[list[list[int]], list[int], list[str]]:
    """Continue every row of prompt ids; returns (new ids per row including trailing pads, valid
    length per row, finish reason per row).

    `compiled_step`, from `CompiledDecoder.session()`, replaces the model for the one-token steps."""
    device = next(model.parameters()).device
    P = max(len(r) for r in rows)
    steps = min(params.max_new_tokens, model.config.block_size - P)
    pad = _pad_id(tokenizer, eos_id)
    batch = _left_pad(rows, steps, pad, device)
    sampler = _Sampler(params, batch, rows, device, eos_id)
    tracker = _FinishTracker(len(rows), steps, eos_id, params.stop, tokenizer, stream, device)
    forward = _Forward(model, batch, rows, use_cache, compiled_step)

    logits = forward.prefill()
    S = P  # columns filled so far
    for s in range(steps):
        nxt = tracker.pad_finished(sampler.next_tokens(logits, S), pad)
        batch.seq[:, S] = nxt
        sampler.record(nxt, S)
        S += 1
        if tracker.observe(nxt, s) or s == steps - 1:
            break
        logits = forward.step(s, S)

    return batch.seq[:, P:S].tolist(), [min(n, S - P) for n in tracker.lengths], tracker.reasons


def _pad_id(tokenizer, eos_id: int | None) -> int:
    pad = getattr(tokenizer, "pad_id", None)
    return pad if pad is not None else (eos_id if eos_id is not None else 0)


@dataclass
class _PaddedBatch:
    """Prompts left-padded into one batch, with room for the tokens to generate."""

    seq: torch.Tensor               # (B, P + steps) prompt + generated tokens; the uncached path's input
    mask: torch.Tensor | None       # (B, P + steps) True on real tokens; None when no row is padded
    positions: torch.Tensor         # (B, steps) position id of each generated column
    prompt_len: int                 # P, the longest prompt

    def mask_up_to(self, end: int) -> torch.Tensor | None:
        return self.mask[:, :end] if self.mask is not None else None


def _left_pad(rows: list[list[int]], steps: int, pad: int, device: torch.device) -> _PaddedBatch:
    B = len(rows)
    lens = [len(r) for r in rows]
    P = max(lens)
    total = P + steps
    seq = torch.full((B, total), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        seq[i, P - len(r):P] = torch.tensor(r, dtype=torch.long)
    seq = seq.to(device)
    if min(lens) == P:
        return _PaddedBatch(seq, None, torch.arange(P, total, device=device)[None].expand(B, steps), P)
    mask = torch.zeros(B, total, dtype=torch.bool)
    for i, n in enumerate(lens):
        mask[i, P - n:] = True
    # Row i's token in column P + s is its (len_i + s)-th real token.
    positions = (torch.tensor(lens)[:, None] + torch.arange(steps)[None]).to(device)
    return _PaddedBatch(seq, mask.to(device), positions, P)


class _Sampler:
    """Picks each step's tokens with the sampling rules, one seeded generator for the whole batch."""

    def __init__(self, params: SamplingParams, batch: _PaddedBatch, rows: list[list[int]], device: torch.device,
                 eos_id: int | None):
        self.params, self.eos_id = params, eos_id
        # (B, P + steps) tokens seen so far, for the repetition penalty.
        self.history = _penalty_history(batch, rows) if params.repetition_penalty != 1.0 else None
        # Each row's real tokens (no pads), for the n-gram rule.
        self.tokens = [list(r) for r in rows] if params.no_repeat_ngram_size else None
        self.generated = 0
        self.generator = None
        if params.seed is not None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed)

    def next_tokens(self, logits: torch.Tensor, filled: int) -> torch.Tensor:
        """(B,) tokens drawn from the last column of `logits` (B, T, vocab)."""
        p = self.params
        scores = logits[:, -1]
        if self.history is not None:
            scores = apply_repetition_penalty(scores, self.history[:, :filled], p.repetition_penalty)
        if self.tokens is not None:
            scores = ban_repeated_ngrams(scores, self.tokens, p.no_repeat_ngram_size)
        if self.generated < p.min_new_tokens and self.eos_id is not None:
            scores = scores.clone()
            scores[:, self.eos_id] = float("-inf")
        return sample_next(scores, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, generator=self.generator)

    def record(self, tokens: torch.Tensor, column: int) -> None:
        if self.history is not None:
            self.history[:, column] = tokens
        if self.tokens is not None:
            for row, token in zip(self.tokens, tokens.tolist()):
                row.append(token)
        self.generated += 1


def _penalty_history(batch: _PaddedBatch, rows: list[list[int]]) -> torch.Tensor:
    """A copy of the prompt batch in which each row's first real token stands in for its pads,
    so that pads are never penalised."""
    P = batch.prompt_len
    history = batch.seq.clone()
    for i, r in enumerate(rows):
        history[i, :P - len(r)] = r[0]
    return history


class _FinishTracker:
    """Which rows have finished, after how many tokens and why; passes running rows' tokens to
    `stream`. Without an end-of-text id, stop strings or a stream, every row runs to the length
    limit and the tokens are never copied to the host."""

    def __init__(self, batch_size: int, steps: int, eos_id: int | None, stop: Sequence[str], tokenizer,
                 stream: StreamFn | None, device: torch.device):
        self.active = eos_id is not None or bool(stop) or stream is not None
        self.eos_id, self.stop, self.tokenizer, self.stream = eos_id, stop, tokenizer, stream
        self.done = [False] * batch_size
        self.lengths = [steps] * batch_size
        self.reasons = ["length"] * batch_size
        self.generated: list[list[int]] = [[] for _ in range(batch_size)]
        self.finished = torch.zeros(batch_size, dtype=torch.bool, device=device) if self.active else None
        self.any_done = False

    def pad_finished(self, tokens: torch.Tensor, pad: int) -> torch.Tensor:
        """`tokens` (B,) with finished rows' entries replaced by `pad`."""
        return tokens.masked_fill(self.finished, pad) if self.any_done else tokens

    def observe(self, tokens: torch.Tensor, step: int) -> bool:
        """Account for the tokens (B,) of decode step `step`; True once every row has finished."""
        if not self.active:
            return False
        for i, tok in enumerate(tokens.tolist()):
            if not self.done[i]:
                self._observe_row(i, tok, step)
        return self.any_done and all(self.done)

    def _observe_row(self, row: int, tok: int, step: int) -> None:
        if tok == self.eos_id:
            self._finish(row, step, "eos")  # the end-of-text token is not part of the result
            return
        if self.stream is not None:
            self.stream(row, tok)
        if self.stop:
            self.generated[row].append(tok)
            if has_stop(self.tokenizer.decode(self.generated[row]), self.stop):
                self._finish(row, step + 1, "stop")

    def _finish(self, row: int, length: int, reason: str) -> None:
        self.done[row], self.lengths[row], self.reasons[row] = True, length, reason
        self.finished[row] = True
        self.any_done = True


class _Forward:
    """The model calls of one generation: the whole prompt once, then one token per step (or the
    whole sequence again at every step without the cache)."""

    def __init__(self, model: nn.Module, batch: _PaddedBatch, rows: list[list[int]], use_cache: bool,
                 compiled_step=None):
        self.model, self.batch, self.use_cache, self.compiled_step = model, batch, use_cache, compiled_step
        B, total = batch.seq.shape
        P = batch.prompt_len
        if compiled_step is not None:
            self.cache = CompiledDecoder.new_cache(model, B, total)
            self.key_start = torch.tensor([P - len(r) for r in rows], device=batch.seq.device)  # first real columns
        else:
            self.cache = model.new_kv_cache(B, total) if use_cache else None

    def prefill(self) -> torch.Tensor:
        """Logits (B, 1, vocab) after the prompt."""
        P, seq = self.batch.prompt_len, self.batch.seq
        if not self.use_cache:
            return self.model(seq[:, :P], attention_mask=self.batch.mask_up_to(P), last_only=True)
        logits = self.model(seq[:, :P], kv_cache=self.cache, attention_mask=self.batch.mask_up_to(P), last_only=True)
        self.cache.advance(P)
        return logits

    def step(self, step: int, filled: int) -> torch.Tensor:
        """Logits (B, 1, vocab) after the token of decode step `step`, the last of `filled` columns."""
        seq, positions, mask = self.batch.seq, self.batch.positions, self.batch.mask_up_to(filled)
        if self.compiled_step is not None:
            logits = self.compiled_step(seq[:, filled - 1:filled], positions[:, step:step + 1], self.key_start,
                                        filled - 1, self.cache)[:, None]
        elif self.use_cache:
            logits = self.model(seq[:, filled - 1:filled], kv_cache=self.cache, attention_mask=mask,
                                position_ids=positions[:, step:step + 1], last_only=True)
        else:
            return self.model(seq[:, :filled], attention_mask=mask, last_only=True)
        self.cache.advance(1)
        return logits

"""Executing one scheduled step: batched forward passes over the slot cache, then sampling.

Every scheduled row brings some new tokens (a whole prompt, a chunk of one, or the single token a
decoding request sampled last step) on top of what its slot already caches. Rows are right-aligned
into one (B, T) batch; the slot cache view supplies per-row positions, per-row cache lengths and
the padding mask, so prefills and decodes of different requests share a single forward pass.
Padding a batch to its longest row costs compute, so when the prefills are long compared with
the decodes (padded tokens more than `max_padding_ratio` times the real ones) the decodes run as
one forward pass and the prefills as another. All decodes always run together.

Each row that reaches its last token gets a next token sampled with its own request's parameters
and its own seeded generator, so a seeded request draws the same tokens whatever else is batched
with it. Greedy rows without rules that depend on their history (repetition penalty, no repeated
n-gram, minimum length) share one batched argmax. A request that asks for log-probabilities gets
its sampled token's score under the model's own distribution (`lmforge.infer.scoring`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from lmforge.infer.kv_cache import SlotKVCache
from lmforge.infer.sampling import apply_rules, sample_next
from lmforge.infer.scheduler import ScheduledRequest, SchedulerOutput
from lmforge.infer.scoring import TokenLogprob, pick_logprobs


class ModelRunner:
    """Runs a decoder model over a `SlotKVCache` for the work one `schedule()` returns."""

    def __init__(self, model: nn.Module, cache: SlotKVCache, *, pad_id: int = 0, max_padding_ratio: float = 2.0,
                 eos_id: int | None = None):
        self.model = model
        self.cache = cache
        self.pad_id, self.eos_id = pad_id, eos_id  # eos: kept out of replies shorter than min_new_tokens
        self.max_padding_ratio = max_padding_ratio
        self.num_forwards = 0
        self.logprobs: dict[str, TokenLogprob] = {}  # the last execute's scores, for requests that asked

    def execute(self, work: SchedulerOutput) -> dict[str, int]:
        """Compute the scheduled tokens into the cache; return the sampled token of each row that
        reached its last token, by request id, and leave in `self.logprobs` the scores of those whose
        request asked for them. Request bookkeeping is left to the caller."""
        self.logprobs = {}
        if not work:
            return {}
        rows: list[ScheduledRequest] = []
        logits: list[torch.Tensor] = []
        with torch.inference_mode():
            for group in self._groups(work.scheduled):
                out = self._forward(group)
                for row, item in enumerate(group):
                    if item.samples:
                        rows.append(item)
                        logits.append(out[row])
            if not rows:
                return {}
            stacked = torch.stack(logits)  # (rows, V)
            tokens = self._sample([item.request for item in rows], stacked)
            self._score([item.request for item in rows], stacked, tokens)
        return {item.request.request_id: tok for item, tok in zip(rows, tokens)}

    def _score(self, requests: list, logits: torch.Tensor, tokens: list[int]) -> None:
        wanted = [i for i, r in enumerate(requests) if r.logprobs is not None]
        for i in wanted:  # one row at a time: each request names its own number of alternatives
            [score] = pick_logprobs(logits[i:i + 1], torch.tensor([tokens[i]], device=logits.device),
                                    requests[i].logprobs)
            self.logprobs[requests[i].request_id] = score

    def _groups(self, items: list[ScheduledRequest]) -> list[list[ScheduledRequest]]:
        real = sum(i.num_tokens for i in items)
        padded = len(items) * max(i.num_tokens for i in items)
        if padded <= self.max_padding_ratio * real:
            return [items]
        decodes = [i for i in items if not i.request.is_prefill]
        prefills = [i for i in items if i.request.is_prefill]
        return [g for g in (decodes, prefills) if g]

    def _forward(self, group: list[ScheduledRequest]) -> torch.Tensor:
        """Last-position logits (B, vocab) of one right-aligned batch; commits the cache."""
        view = self.cache.batch([i.request.slot for i in group], [i.num_tokens for i in group])
        T = view.width
        ids = torch.full((len(group), T), self.pad_id, dtype=torch.long)
        for row, item in enumerate(group):
            ids[row, T - item.num_tokens:] = torch.tensor(item.request.next_input(item.num_tokens))
        ids = ids.to(self.cache.device)
        logits = self.model(ids, kv_cache=view, attention_mask=view.attention_mask, position_ids=view.position_ids,
                            last_only=True)
        self.cache.commit(view)
        self.num_forwards += 1
        return logits[:, -1]

    def _sample(self, requests: list, logits: torch.Tensor) -> list[int]:
        out: list[int | None] = [None] * len(requests)
        plain_greedy = [i for i, r in enumerate(requests) if r.params.temperature == 0 and not r.params.has_rules]
        if plain_greedy:
            picked = logits[plain_greedy].argmax(dim=-1).tolist()
            for i, tok in zip(plain_greedy, picked):
                out[i] = tok
        for i, r in enumerate(requests):
            if out[i] is not None:
                continue
            p = r.params
            scores = logits[i:i + 1]
            if p.has_rules:
                scores = apply_rules(scores, [r.token_ids()], [len(r.output_ids)], eos_id=self.eos_id,
                                     repetition_penalty=p.repetition_penalty,
                                     no_repeat_ngram_size=p.no_repeat_ngram_size, min_new_tokens=p.min_new_tokens)
            out[i] = int(sample_next(scores, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                                     generator=r.generator))
        return out

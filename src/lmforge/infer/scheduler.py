"""Deciding, step by step, which requests run and how many of their tokens each step computes.

Requests wait in arrival order. Every `schedule()` builds one step's work under two limits: a
token budget (`max_num_batched_tokens`: prompt tokens being prefilled plus one token per decoding
request) and the KV cache's free slots. Running requests that are decoding come first, since they
already hold a slot and someone is waiting on their next token; then running requests whose
prompt is being prefilled in chunks continue; then waiting requests are admitted, oldest first,
while a slot is free and budget is left. With `chunked_prefill` a prompt longer than the budget
left is split across steps; without it the prompt waits until a step has room for all of it.

A request that could never run (its prompt plus `max_new_tokens` exceed the context or a cache
slot, or without chunking its prompt exceeds the token budget) is rejected when it is added.
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from lmforge.errors import ConfigError
from lmforge.infer.kv_cache import SlotKVCache
from lmforge.infer.sampling import SamplingParams

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


class RequestError(ConfigError):
    """A request that cannot be served as given (too long, empty, duplicate id, bad token ids...)."""


@dataclass(eq=False)
class Request:
    """One prompt being completed, and everything the engine tracks about it."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: int
    arrival_time: float = field(default_factory=time.monotonic)
    status: str = WAITING
    slot: int | None = None
    num_computed: int = 0                 # tokens whose keys/values are in the cache
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    generator: torch.Generator | None = None
    callback: Callable | None = None
    sent_text: str = ""                   # text already streamed
    text: str | None = None               # the final text, once finished
    first_token_time: float | None = None
    logprobs: int | None = None           # report each sampled token's score with this many alternatives

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def max_total_tokens(self) -> int:
        return len(self.prompt_ids) + self.params.max_new_tokens

    @property
    def num_pending(self) -> int:
        """Tokens not yet in the cache: the rest of the prompt, or the last sampled token."""
        return self.num_tokens - self.num_computed

    @property
    def is_prefill(self) -> bool:
        return self.num_computed < len(self.prompt_ids)

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def next_input(self, n: int) -> list[int]:
        """The next `n` token ids to feed the model."""
        start, P = self.num_computed, len(self.prompt_ids)
        if start < P:  # a prompt chunk: nothing is sampled before the whole prompt is cached
            return self.prompt_ids[start:start + n]
        return self.output_ids[start - P:start - P + n]


@dataclass
class ScheduledRequest:
    """`num_tokens` of `request`'s pending tokens to compute this step."""

    request: Request
    num_tokens: int

    @property
    def samples(self) -> bool:
        """Whether this step reaches the request's last token, so a new token is sampled."""
        return self.request.num_computed + self.num_tokens == self.request.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest]
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0

    @property
    def num_batched_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens

    def __bool__(self) -> bool:
        return bool(self.scheduled)


class Scheduler:
    """FIFO admission of requests into KV cache slots under a per-step token budget."""

    def __init__(self, cache: SlotKVCache, *, max_num_batched_tokens: int, context_len: int,
                 chunked_prefill: bool = True):
        if max_num_batched_tokens < cache.n_slots:
            raise ConfigError(f"max_num_batched_tokens ({max_num_batched_tokens}) is smaller than the number of "
                              f"slots ({cache.n_slots}), so running requests could not all decode in one step",
                              f"pass max_num_batched_tokens >= {cache.n_slots} or fewer slots")
        self.cache = cache
        self.max_num_batched_tokens = max_num_batched_tokens
        self.context_len = min(context_len, cache.max_len)
        self.chunked_prefill = chunked_prefill
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._arrivals = itertools.count()

    def next_arrival(self) -> int:
        return next(self._arrivals)

    # ------------------------------------------------------------ admission
    def check(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise `RequestError` if a request with this prompt and params could never run."""
        n = len(prompt_ids)
        if n == 0:
            raise RequestError("the prompt is empty", "pass at least one token (e.g. the end-of-text id)")
        ctx = self.context_len
        if n >= ctx:
            raise RequestError(f"prompt has {n} tokens but the context length is {ctx}",
                               f"shorten the prompt to at most {ctx - 1} tokens")
        if n + params.max_new_tokens > ctx:
            raise RequestError(f"prompt ({n} tokens) plus max_new_tokens ({params.max_new_tokens}) exceeds the "
                               f"context length {ctx}", f"lower max_new_tokens to at most {ctx - n}")
        if not self.chunked_prefill and n > self.max_num_batched_tokens:
            raise RequestError(f"prompt has {n} tokens but a step computes at most {self.max_num_batched_tokens}",
                               "raise max_num_batched_tokens, enable chunked prefill or shorten the prompt")
        if params.num_samples != 1:
            raise RequestError(f"a request produces one completion, got num_samples={params.num_samples}",
                               "add the prompt once per completion wanted")

    def add(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise RequestError(f"request id {request.request_id!r} is already in use", "pass a unique request_id")
        self.check(request.prompt_ids, request.params)
        request.status = WAITING
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish(self, request: Request, reason: str) -> None:
        """Mark `request` finished and give its slot back."""
        if request.finished:
            return
        if request.status == RUNNING:
            self.running.remove(request)
            self.cache.free(request.slot)
        else:
            self.waiting.remove(request)
        request.status, request.finish_reason = FINISHED, reason
        del self.requests[request.request_id]

    # ------------------------------------------------------------ one step
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput([])
        budget = self.max_num_batched_tokens
        prefilling = []
        for r in self.running:
            if r.is_prefill:
                prefilling.append(r)
            else:
                out.scheduled.append(ScheduledRequest(r, 1))
                out.num_decode_tokens += 1
                budget -= 1
        for r in prefilling:
            n = min(r.num_pending, budget)
            if n > 0:
                out.scheduled.append(ScheduledRequest(r, n))
                out.num_prefill_tokens += n
                budget -= n
        while self.waiting and budget > 0:
            r = self.waiting[0]
            if not self.cache.can_admit(r.max_total_tokens):
                break
            n = r.num_pending
            if n > budget:
                if not self.chunked_prefill:
                    break  # first come, first served: later prompts do not overtake this one
                n = budget
            self.waiting.popleft()
            r.slot = self.cache.allocate()
            r.status = RUNNING
            self.running.append(r)
            out.scheduled.append(ScheduledRequest(r, n))
            out.num_prefill_tokens += n
            budget -= n
        return out

"""An inference engine that serves many generation requests at once with continuous batching.

Requests arrive at any time (`add_request`) and leave as soon as they finish, so the batch is
re-formed at every step instead of once per call. Each `step()` runs one loop iteration:

    schedule  - pick this step's work: every decoding request (one token each), then prompt
                prefills while the token budget and free KV cache slots allow;
    execute   - one batched forward over the slot cache for that work, and a token sampled for
                every request that reached its last token, with that request's own parameters;
    update    - append the tokens, decode the new text, detect end-of-text, stop strings, the
                token limit and the end of the context, free the slots of finished requests and
                report a `RequestOutput` (new tokens, new text, finish reason) per request.

Outputs reach callers three ways: the list `step()` returns, a per-request callback given to
`add_request`, and `stream(request_id)`, an iterator that drives steps until that request ends.
`generate()` runs a list of prompts to completion. Greedy results equal those of the reference
`lmforge.infer.generate`, whatever the batch composition; seeded sampling gives the same tokens
whatever else is in the batch. Only decoder (GPT-family) models are served.
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.infer.generate import Completion, encode_prompt
from lmforge.infer.stops import cut_at_stop, held_back, ids_before
from lmforge.infer.kv_cache import SlotKVCache
from lmforge.infer.runner import ModelRunner
from lmforge.infer.sampling import SamplingParams
from lmforge.infer.scheduler import Request, RequestError, Scheduler
from lmforge.infer.scoring import TokenLogprob

FINISH_REASONS = ("eos", "stop", "length", "abort")


@dataclass
class RequestOutput:
    """What one step produced for one request.

    `new_token_ids` are the tokens sampled this step (never end-of-text); `new_text` is the text
    that became final this step: text that might be the start of a stop string, or a character
    still missing bytes, is held back until it is settled, and text from a stop string on is
    never sent. When a stop string ends a request, its final token count excludes the tokens
    that only formed the stop string, as in `generate`. When the request asked for log-probabilities,
    `new_logprobs` holds the score of the token sampled this step, even an end-of-text token (which
    `new_token_ids` leaves out, as the reply does).
    """

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    new_logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class EngineStats:
    """A snapshot for monitoring; throughputs are over the time spent inside `step()`."""

    num_waiting: int
    num_running: int
    num_slots: int
    num_free_slots: int
    kv_cache_bytes: int
    kv_cache_usage: float           # cached positions / capacity
    max_num_batched_tokens: int
    num_steps: int
    num_forwards: int
    prompt_tokens: int              # prompt tokens computed so far
    generation_tokens: int          # tokens sampled so far
    requests_finished: int
    requests_aborted: int
    busy_s: float
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    last_step_batched_tokens: int


OutputCallback = Callable[[RequestOutput], None]


class Engine:
    """Continuous-batching generation for a decoder model (see the module docstring).

    `max_slots` requests run at once, each owning a KV cache slot of `max_len` positions
    (default: the model's context length); at most `max_num_batched_tokens` tokens are computed
    per step. `eos_id` defaults to the tokenizer's end-of-text id. `chunked_prefill` lets a long
    prompt be prefilled over several steps instead of waiting for a step with room for all of it.
    The cache takes the model's dtype and device; the model is left in eval mode. One thread at a
    time may drive an engine (add, abort, step).
    """

    def __init__(self, model: nn.Module, tokenizer=None, *, max_slots: int = 16, max_num_batched_tokens: int = 512,
                 max_len: int | None = None, eos_id: int | None = None, chunked_prefill: bool = True):
        if hasattr(model, "encode") and hasattr(model, "decode"):
            raise ConfigError(f"{getattr(model, 'family', 'encoder-decoder')} models turn a source into a target "
                              "instead of continuing a prompt", "decode them with lmforge.infer.seq2seq.generate_seq2seq")
        if not hasattr(model, "config") or not hasattr(model.config, "n_kv_head"):
            raise ConfigError(f"the engine serves decoder (GPT-family) models, got {type(model).__name__}",
                              "use lmforge.infer.generate for other models")
        block = model.config.block_size
        max_len = block if max_len is None else max_len
        if not 1 < max_len <= block:
            raise ConfigError(f"max_len must be in [2, {block}] (the model's context length), got {max_len}",
                              f"pass max_len <= {block} or leave it unset")
        if max_slots < 1:
            raise ConfigError(f"max_slots must be >= 1, got {max_slots}", "pass e.g. max_slots=16")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.eos_id = eos_id if eos_id is not None else getattr(tokenizer, "eos_id", None)
        pad = getattr(tokenizer, "pad_id", None)
        pad = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)
        self.cache = SlotKVCache.for_model(model, max_slots, max_len)
        self.scheduler = Scheduler(self.cache, max_num_batched_tokens=max_num_batched_tokens, context_len=block,
                                   chunked_prefill=chunked_prefill)
        self.runner = ModelRunner(model, self.cache, pad_id=pad, eos_id=self.eos_id)
        self.vocab_size = model.config.vocab_size
        self._ids = itertools.count()
        self._pending: list[RequestOutput] = []      # abort outputs not yet returned by step()
        self._streams: dict[str, deque[RequestOutput]] = {}
        self._steps = 0
        self._busy = 0.0
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self._finished = 0
        self._aborted = 0
        self._last_batched = 0

    # ------------------------------------------------------------ requests
    def add_request(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
                    request_id: str | None = None, *, callback: OutputCallback | None = None,
                    logprobs: int | None = None) -> str:
        """Queue a prompt (text, or token ids) for completion; returns its request id.

        Raises `RequestError` (a `ConfigError`) for a request that could never run. `callback`
        receives every `RequestOutput` of this request as it is produced. `logprobs` k (0 or more)
        scores every generated token under the model's distribution, with its k most likely alternatives.
        """
        return self._add(prompt, params, request_id, callback, logprobs).request_id

    def _add(self, prompt, params, request_id, callback, logprobs: int | None = None) -> Request:
        params = params if params is not None else SamplingParams()
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestError("a text prompt needs a tokenizer", "pass token ids or give the engine a tokenizer")
            ids = encode_prompt(self.tokenizer, prompt)
        else:
            ids = [int(t) for t in (prompt.tolist() if isinstance(prompt, torch.Tensor) else prompt)]
        if any(t < 0 or t >= self.vocab_size for t in ids):
            raise RequestError(f"prompt token ids must be in [0, {self.vocab_size})",
                               "encode the prompt with the model's tokenizer")
        if params.stop and self.tokenizer is None:
            raise RequestError("stop strings need a tokenizer to decode the generated text",
                               "give the engine a tokenizer")
        rid = str(request_id) if request_id is not None else f"req-{next(self._ids)}"
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=self.cache.device)
            gen.manual_seed(params.seed)
        if logprobs is not None and not 0 <= logprobs <= self.vocab_size:
            raise RequestError(f"logprobs must be in [0, {self.vocab_size}], got {logprobs}", "pass e.g. 5")
        req = Request(rid, ids, params, self.scheduler.next_arrival(), generator=gen, callback=callback,
                      logprobs=logprobs)
        self.scheduler.add(req)
        return req

    def abort(self, request_id: str) -> bool:
        """Cancel a waiting or running request and free its slot; False if it is unknown or already over.

        Its final output (finish_reason "abort") goes to its callback and stream now and is
        returned by the next `step()`.
        """
        req = self.scheduler.requests.get(request_id)
        if req is None:
            return False
        self.scheduler.finish(req, "abort")
        req.text = req.sent_text if self.tokenizer is not None else None
        self._aborted += 1
        out = self._output(req, [], "")
        self._pending.append(out)
        self._deliver(req, out)
        return True

    def has_unfinished(self) -> bool:
        return bool(self.scheduler.requests)

    def num_unfinished(self) -> int:
        return len(self.scheduler.requests)

    # ------------------------------------------------------------ the loop
    def step(self) -> list[RequestOutput]:
        """Run one schedule -> execute -> update iteration; return the outputs it produced."""
        outputs, self._pending = self._pending, []
        work = self.scheduler.schedule()
        self._last_batched = work.num_batched_tokens
        if not work:
            if self.scheduler.requests and not outputs:
                raise RuntimeError("the scheduler made no progress although requests are unfinished")
            return outputs
        start = time.perf_counter()
        sampled = self.runner.execute(work)
        self._prompt_tokens += work.num_prefill_tokens
        for item in work.scheduled:
            item.request.num_computed += item.num_tokens
        now = time.monotonic()
        produced = []
        for item in work.scheduled:
            req = item.request
            tok = sampled.get(req.request_id)
            if tok is None:  # a prompt chunk that did not reach the prompt's end
                continue
            self._generation_tokens += 1
            if req.first_token_time is None:
                req.first_token_time = now
            out = self._update(req, tok)
            score = self.runner.logprobs.get(req.request_id)
            if score is not None:
                out.new_logprobs = [score]
            produced.append((req, out))
        self._steps += 1
        self._busy += time.perf_counter() - start
        # Callbacks run once every request is updated, so one that raises or aborts leaves no request half-done.
        for req, out in produced:
            outputs.append(out)
            self._deliver(req, out)
        return outputs

    def _update(self, req: Request, tok: int) -> RequestOutput:
        """Append `tok` to `req`, settle its text and decide whether it is finished."""
        p = req.params
        if self.eos_id is not None and tok == self.eos_id:
            return self._finish(req, [], "eos")
        req.output_ids.append(tok)
        text = None
        if self.tokenizer is not None:
            text = self.tokenizer.decode(req.output_ids)
            if p.stop:
                before, hit = cut_at_stop(text, p.stop)
                if hit:
                    req.output_ids = ids_before(self.tokenizer, req.output_ids, before)
                    return self._finish(req, [tok], "stop", before)
        if len(req.output_ids) >= p.max_new_tokens or req.num_tokens >= self.scheduler.context_len:
            return self._finish(req, [tok], "length", text)
        delta = ""
        if text is not None and not text.endswith("\ufffd"):
            visible = text[:len(text) - held_back(text, p.stop)] if p.stop else text
            if len(visible) > len(req.sent_text) and visible.startswith(req.sent_text):
                delta = visible[len(req.sent_text):]
                req.sent_text = visible
        return self._output(req, [tok], delta)

    def _finish(self, req: Request, new_ids: list[int], reason: str, text: str | None = None) -> RequestOutput:
        if self.tokenizer is not None and text is None:
            text = self.tokenizer.decode(req.output_ids)
        req.text = text
        self.scheduler.finish(req, reason)
        self._finished += 1
        delta = ""
        if text is not None and text.startswith(req.sent_text):
            delta = text[len(req.sent_text):]
            req.sent_text = text
        return self._output(req, new_ids, delta)

    def _output(self, req: Request, new_ids: list[int], delta: str) -> RequestOutput:
        return RequestOutput(req.request_id, new_ids, delta, req.finished, req.finish_reason, req.prompt_len,
                             len(req.output_ids))

    def _deliver(self, req: Request, out: RequestOutput) -> None:
        buf = self._streams.get(req.request_id)
        if buf is not None:
            buf.append(out)
        if req.callback is not None:
            req.callback(out)

    # ------------------------------------------------------------ conveniences
    def stream(self, request_id: str) -> Iterator[RequestOutput]:
        """Yield `request_id`'s outputs as they are produced, running steps (which advance every
        request) until it finishes. Tokens produced before the call arrive as one first output."""
        req = self.scheduler.requests.get(request_id)
        if req is None:
            raise RequestError(f"no unfinished request {request_id!r}", "stream a request before it finishes")
        buf = self._streams.setdefault(request_id, deque())
        if req.output_ids and not buf:
            buf.append(self._output(req, list(req.output_ids), req.sent_text))
        try:
            while True:
                while buf:
                    out = buf.popleft()
                    yield out
                    if out.finished:
                        return
                self.step()
        finally:
            self._streams.pop(request_id, None)

    def generate(self, prompts: str | Sequence[str | Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[Completion]:
        """Complete every prompt (text or token ids) and return the completions in order.

        `params` is one `SamplingParams` for all prompts or one per prompt. With `num_samples` n > 1
        a prompt gets n completions, prompt by prompt; a seeded one uses seeds seed, seed + 1, ...
        Requests added before keep running; their outputs go to their callbacks and streams only.
        """
        if isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], int)):
            prompts = [prompts]
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ConfigError(f"got {len(params)} SamplingParams for {len(prompts)} prompts",
                              "pass one SamplingParams, or one per prompt")
        reqs: list[Request] = []
        try:
            for prompt, p in zip(prompts, params):
                for j in range(p.num_samples):
                    seed = p.seed + j if p.seed is not None else None
                    one = replace(p, num_samples=1, seed=seed) if p.num_samples != 1 else p
                    reqs.append(self._add(prompt, one, None, None))
        except Exception:
            for r in reqs:
                self.abort(r.request_id)
            raise
        while not all(r.finished for r in reqs):
            self.step()
        return [Completion(list(r.output_ids), r.text, r.finish_reason) for r in reqs]

    def stats(self) -> EngineStats:
        cache = self.cache
        capacity = cache.n_slots * cache.max_len
        busy = self._busy
        return EngineStats(
            num_waiting=len(self.scheduler.waiting), num_running=len(self.scheduler.running),
            num_slots=cache.n_slots, num_free_slots=cache.free_slots, kv_cache_bytes=cache.nbytes,
            kv_cache_usage=cache.used_tokens / capacity, max_num_batched_tokens=self.scheduler.max_num_batched_tokens,
            num_steps=self._steps, num_forwards=self.runner.num_forwards, prompt_tokens=self._prompt_tokens,
            generation_tokens=self._generation_tokens, requests_finished=self._finished,
            requests_aborted=self._aborted, busy_s=busy,
            prompt_tokens_per_s=self._prompt_tokens / busy if busy > 0 else 0.0,
            generation_tokens_per_s=self._generation_tokens / busy if busy > 0 else 0.0,
            last_step_batched_tokens=self._last_batched)

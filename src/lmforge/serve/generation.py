"""One generation request (completions or chat) carried through the engine: its engine requests
(one per prompt and sample), their outputs, and the JSON or event stream the client gets."""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from lmforge.errors import LmforgeError
from lmforge.infer.engine import RequestOutput
from lmforge.infer.sampling import SamplingParams
from lmforge.serve.engine_loop import EngineStopped, Submission
from lmforge.serve.errors import APIError, timeout_error
from lmforge.serve.logprobs import chat_logprobs, completion_logprobs
from lmforge.serve.prompt_scores import Echo, echoes
from lmforge.serve.state import ServerState
from lmforge.serve.streaming import DONE, SSEResponse, sse, sse_error

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # engine finish reason -> OpenAI's
CLIENT_CLOSED_REQUEST = 499


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def engine_unavailable(exc: EngineStopped) -> APIError:
    return APIError(503, str(exc), "server_error", code="engine_unavailable")


def engine_error(exc: BaseException) -> APIError:
    """The answer for an exception the engine delivered instead of an output."""
    if isinstance(exc, LmforgeError):
        return APIError(400, str(exc), param="prompt", code="invalid_prompt")
    if isinstance(exc, EngineStopped):
        return engine_unavailable(exc)
    return APIError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error", code="internal_error")


@dataclass
class Scoring:
    """What a request asked beyond text: each token's score with `logprobs` alternatives (None: no scores), and
    with `echo_texts` (the prompts as given, one per prompt) the prompts put before their completions."""

    tokenizer: object
    logprobs: int | None = None
    echo_texts: list[str | list[int]] | None = None
    echo: list[Echo] | None = None  # one per engine request, filled in by `run_generation`


class Generation:
    """The engine requests behind one HTTP request (one per prompt and sample) and their outputs."""

    def __init__(self, state: ServerState, request: Request, kind: str, prompts: list[list[int]],
                 params: list[SamplingParams], *, samples_per_prompt: int, strip_leading: bool,
                 scoring: Scoring | None = None):
        self.state, self.request, self.kind = state, request, kind
        self.scoring = scoring
        self.prompts, self.params = prompts, params
        self.samples_per_prompt = samples_per_prompt
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.start = time.monotonic()
        self.deadline = state.deadline()
        n = len(prompts)
        self.text = [""] * n
        self.started = [not strip_leading] * n
        self.finish: list[str | None] = [None] * n
        self.prompt_tokens = [len(p) for p in prompts]
        self.completion_tokens = [0] * n
        self.scores: list[list] = [[] for _ in range(n)]  # one per sampled token, when scores were asked for
        self.ended_on_eos = [False] * n
        self.first_token_at: float | None = None
        self.sub: Submission | None = None
        self._closed = False

    def submit(self) -> None:
        try:
            logprobs = self.scoring.logprobs if self.scoring is not None else None
            self.sub = self.state.loop.submit(list(zip(self.prompts, self.params)), self.id, logprobs=logprobs)
        except EngineStopped as e:
            raise engine_unavailable(e) from None

    async def next(self, *, watch_disconnect: bool) -> tuple[int, RequestOutput]:
        """The next output of any of this request's engine requests."""
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise timeout_error(self.state.limits.request_timeout)
            if not self.sub.queue.empty():  # already delivered: no need to wait (or create a task) for it
                index, item = self.sub.queue.get_nowait()
            else:
                wait = min(remaining, 1.0) if watch_disconnect else remaining
                try:
                    index, item = await asyncio.wait_for(self.sub.queue.get(), timeout=wait)
                except asyncio.TimeoutError:
                    if watch_disconnect and await self.request.is_disconnected():
                        raise ClientGone() from None
                    continue
            if isinstance(item, BaseException):
                raise engine_error(item)
            return index, item

    def take(self, index: int, out: RequestOutput) -> str:
        """Record `out`; return the text it adds to choice `index`."""
        if self.first_token_at is None and (out.new_token_ids or out.finished):
            self.first_token_at = time.monotonic()
            self.state.metrics.ttft.observe(self.first_token_at - self.start)
        delta = out.new_text
        if not self.started[index]:
            # The chat template leaves a space after "Assistant:" that the model usually writes itself.
            delta = delta.lstrip()
            self.started[index] = bool(delta)
        self.text[index] += delta
        self.scores[index] += out.new_logprobs
        if out.finish_reason == "eos":
            self.ended_on_eos[index] = True
        self.completion_tokens[index] = out.completion_tokens
        self.prompt_tokens[index] = out.prompt_tokens
        if out.finished:
            self.finish[index] = FINISH.get(out.finish_reason or "", "stop")
        return delta

    @property
    def finished(self) -> bool:
        return all(f is not None for f in self.finish)

    def usage(self) -> dict:
        # Each prompt counts once, however many samples were drawn from it.
        prompt = sum(t for i, t in enumerate(self.prompt_tokens) if i % self.samples_per_prompt == 0)
        completion = sum(self.completion_tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def close(self) -> None:
        """Abort whatever is still running (client gone, timeout, error) and release the request slot."""
        if self._closed:
            return
        self._closed = True
        if self.sub is not None and not self.finished:
            self.state.loop.abort([rid for rid, f in zip(self.sub.request_ids, self.finish) if f is None])
        if self.finished:
            self.state.metrics.latency.observe(time.monotonic() - self.start)
        self.state.release()

    # ------------------------------------------------------------ response shapes
    def chunk(self, index: int, delta: str | None, finish: str | None, *, role: bool = False) -> dict:
        base = {"id": self.id, "created": self.created, "model": self.state.model_name}
        if self.kind == "chat":
            d: dict = {"role": "assistant", "content": ""} if role else ({} if delta is None else {"content": delta})
            return {**base, "object": "chat.completion.chunk", "system_fingerprint": None,
                    "choices": [{"index": index, "delta": d, "logprobs": None, "finish_reason": finish}]}
        return {**base, "object": "text_completion",
                "choices": [{"index": index, "text": delta or "", "logprobs": None, "finish_reason": finish}]}

    def usage_chunk(self) -> dict:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.state.model_name,
                "choices": [], "usage": self.usage()}

    def body(self) -> dict:
        base = {"id": self.id, "created": self.created, "model": self.state.model_name}
        if self.kind == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": t, "refusal": None},
                        "logprobs": self._logprobs(i), "finish_reason": f}
                       for i, (t, f) in enumerate(zip(self.text, self.finish))]
            return {**base, "object": "chat.completion", "system_fingerprint": None, "choices": choices,
                    "usage": self.usage()}
        echo = self.scoring.echo if self.scoring is not None else None
        choices = [{"index": i, "text": (echo[i].text if echo else "") + t, "logprobs": self._logprobs(i),
                    "finish_reason": f} for i, (t, f) in enumerate(zip(self.text, self.finish))]
        return {**base, "object": "text_completion", "choices": choices, "usage": self.usage()}

    def _logprobs(self, index: int) -> dict | None:
        """Choice `index`'s scores in OpenAI's shape, over the tokens of its final reply (and its echoed prompt)."""
        sc = self.scoring
        if sc is None or sc.logprobs is None:
            return None
        # A stop string cuts the reply: scores past it are dropped. An end-of-text token stays scored, as
        # clients that score a prompt by asking for one more token (lm-evaluation-harness) drop the last score.
        n = self.completion_tokens[index]
        if self.kind == "chat":
            return chat_logprobs(sc.tokenizer, self.scores[index][:n])
        scores = self.scores[index][:n + self.ended_on_eos[index]]
        ids = [s.token_id for s in scores]
        if sc.echo:
            ids, scores = sc.echo[index].ids + ids, sc.echo[index].scores + scores
        return completion_logprobs(sc.tokenizer, ids, scores)


async def stream_events(gen: Generation, first: tuple[int, RequestOutput], include_usage: bool) -> AsyncIterator[str]:
    """The events of `gen`, starting from its already awaited `first` output."""
    if gen.kind == "chat":
        for i in range(len(gen.prompts)):
            yield sse(gen.chunk(i, None, None, role=True))
    pending: tuple[int, RequestOutput] | None = first
    try:
        while True:
            index, out = pending if pending is not None else await gen.next(watch_disconnect=False)
            pending = None
            delta = gen.take(index, out)
            if delta:
                yield sse(gen.chunk(index, delta, None))
            if out.finished:
                yield sse(gen.chunk(index, None if gen.kind == "chat" else "", gen.finish[index]))
            if gen.finished:
                break
    except APIError as e:  # the status line has gone out: the error becomes the stream's last event
        yield sse_error(e)
    if include_usage and gen.finished:
        yield sse(gen.usage_chunk())
    yield DONE


async def run_generation(state: ServerState, request: Request, kind: str, prompts: list[list[int]],
                         params: list[SamplingParams], body, *, strip_leading: bool,
                         scoring: Scoring | None = None) -> Response:
    """Answer a completions (`kind` "completion") or chat request: one JSON body, or an event stream."""
    state.acquire()
    gen = Generation(state, request, kind, prompts, params, samples_per_prompt=body.n, strip_leading=strip_leading,
                     scoring=scoring)
    streaming = False
    try:
        if scoring is not None and scoring.echo_texts is not None:
            echoed = await echoes(state, scoring.tokenizer, scoring.echo_texts, prompts[::body.n], scoring.logprobs)
            scoring.echo = [e for e in echoed for _ in range(body.n)]
        gen.submit()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            # The first output is awaited here so that a refused request still gets its own status code.
            first = await gen.next(watch_disconnect=True)
            response = SSEResponse(stream_events(gen, first, include_usage), gen.close)
            streaming = True
            return response
        while not gen.finished:
            index, out = await gen.next(watch_disconnect=True)
            gen.take(index, out)
        return JSONResponse(gen.body())
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    finally:
        if not streaming:
            gen.close()

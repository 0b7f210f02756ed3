"""An OpenAI-compatible HTTP server over the continuous-batching engine.

    app = create_app("runs/demo", api_keys=["secret"], task_models={"classify": "runs/sentiment"})
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints: `POST /v1/completions` and `POST /v1/chat/completions` (with `"stream": true` as
server-sent events ending in `data: [DONE]`), `GET /v1/models`, one route per loaded task model
(`/v1/classify`, `/v1/ner`, `/v1/qa`, `/v1/translate`, `/v1/summarize`), `GET /health`,
`GET /metrics` (Prometheus text format) and the web playground at `/`.

Every generation request goes to the engine, which one background thread drives; task models
run in worker threads. API keys (when given) guard every `/v1/` route; `/`, `/health` and
`/metrics` stay open so probes and scrapers need no key. Every error is OpenAI's error JSON
`{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx status.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Mapping

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.errors import ConfigError, LmforgeError
from lmforge.infer.chat import TURN_STOP, format_transcript
from lmforge.infer.engine import Engine, RequestOutput
from lmforge.infer.generate import encode_prompt
from lmforge.infer.sampling import SamplingParams
from lmforge.serve.engine_loop import EngineLoop, EngineStopped, Submission
from lmforge.serve.schemas import ChatCompletionRequest, CompletionRequest, QARequest, TaskRequest

log = logging.getLogger("lmforge.serve")

TASKS = ("classify", "ner", "qa", "translate", "summarize")
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/",
             *(f"/v1/{t}" for t in TASKS))


# ---------------------------------------------------------------------- errors
class APIError(Exception):
    """An error answered as `{"error": {...}}` with HTTP status `status`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", *, param: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), self.status,
                            headers=self.headers)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request body")
    first = errors[0]
    if first.get("type") not in ("json_invalid", "missing"):
        # Of a union's alternatives, the one whose error lies deepest came closest to fitting.
        head = first.get("loc", ())[:2]
        first = max((e for e in errors if e.get("loc", ())[:2] == head), key=lambda e: len(e.get("loc", ())))
    kind = first.get("type", "")
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error") or first.get("msg", "")
        return APIError(400, f"the request body is not valid JSON: {detail}", code="invalid_json")
    if not loc and kind in ("missing", "model_attributes_type", "dict_type"):
        return APIError(400, "the request body must be a JSON object", code="invalid_body")
    # A union reports one error per alternative; the field path without the alternatives' names reads best.
    fields = [p for p in loc if not _union_tag(p)]
    param = ".".join(fields) or None
    msg = first.get("msg", "invalid value")
    if kind == "missing":
        return APIError(400, f"missing required parameter: {param}", param=param, code="missing_parameter")
    if kind.startswith("value_error"):
        msg = msg.removeprefix("Value error, ")
        return APIError(400, f"{param} {msg}", param=param, code="invalid_value")
    return APIError(400, f"invalid value for {param}: {msg}", param=param, code="invalid_value")


def _union_tag(part: str) -> bool:
    """Whether a location part names a union alternative (`str`, `list[int]`...) rather than a field."""
    return (part in ("str", "int", "float", "bool", "none") or part[:1].isupper()
            or part.startswith(("list[", "dict[", "function-", "constrained-", "json-or-python")))


# ---------------------------------------------------------------------- metrics
class Histogram:
    """A Prometheus histogram (cumulative buckets, sum and count)."""

    def __init__(self, buckets: Iterable[float]):
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            for i, b in enumerate(self.buckets):
                if value <= b:
                    self.counts[i] += 1
            self.sum += value
            self.count += 1

    def render(self, name: str, help: str) -> list[str]:
        with self._lock:
            lines = [f"# HELP {name} {help}", f"# TYPE {name} histogram"]
            lines += [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
            lines += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}",
                      f"{name}_count {self.count}"]
        return lines


@dataclass
class Metrics:
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    responses: dict[tuple[str, int], int] = field(default_factory=dict)
    in_flight: int = 0


# ---------------------------------------------------------------------- state
@dataclass
class TaskModel:
    name: str
    run_dir: str
    pipeline: Callable
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Limits:
    max_prompt_tokens: int
    max_tokens_limit: int
    max_body_bytes: int
    max_concurrent: int
    request_timeout: float | None


class ServerState:
    """Everything the handlers share: the engine loop, task models, limits and metrics."""

    def __init__(self, engine: Engine, model_name: str, limits: Limits, api_keys: Iterable[str],
                 tasks: dict[str, TaskModel]):
        self.engine = engine
        self.loop = EngineLoop(engine)
        self.model_name = model_name
        self.limits = limits
        self.api_keys = [k.encode() for k in api_keys if k]
        self.tasks = tasks
        self.metrics = Metrics()
        self.created = int(time.time())
        self.context_len = engine.scheduler.context_len
        self.active = 0

    # -------------------------------------------------------------- concurrency
    def acquire(self) -> None:
        if self.active >= self.limits.max_concurrent:
            raise APIError(429, f"the server is handling {self.limits.max_concurrent} requests, its limit; "
                                "retry shortly", "rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"})
        self.active += 1

    def release(self) -> None:
        self.active -= 1

    def deadline(self) -> float:
        t = self.limits.request_timeout
        return time.monotonic() + t if t is not None and t > 0 else float("inf")

    def authorized(self, header: str | None) -> bool:
        if not self.api_keys:
            return True
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        token_b = token.strip().encode()
        # Compare against every key so the time taken does not tell which one came close.
        ok = False
        for key in self.api_keys:
            ok |= hmac.compare_digest(token_b, key)
        return ok


# ---------------------------------------------------------------------- the guard in front of every request
class _Guard:
    """ASGI middleware: API keys on /v1/ routes, the request body size limit, and response counts."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else ("/v1/models" if path.startswith("/v1/models/") else "other")
        status_box = [500]

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, counting_send, path)
        finally:
            key = (endpoint, status_box[0])
            self.state.metrics.responses[key] = self.state.metrics.responses.get(key, 0) + 1

    async def _handle(self, scope, receive, send, path: str):
        state = self.state
        if path.startswith("/v1/"):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            if not state.authorized(headers.get("authorization")):
                missing = "authorization" not in headers
                msg = ("no API key given; send the header Authorization: Bearer <key>" if missing
                       else "invalid API key")
                err = APIError(401, msg, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await err.response()(scope, receive, send)
            if scope.get("method") == "POST":
                scope = _json_content_type(scope)
        limit = state.limits.max_body_bytes
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        too_large = APIError(413, f"the request body exceeds the server's limit of {limit} bytes",
                             code="request_too_large")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await APIError(400, "invalid Content-Length header").response()(scope, receive, send)
            if n > limit:
                return await too_large.response()(scope, receive, send)
            return await self.app(scope, receive, send)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        # A body without a length (chunked): read it up to the limit, then replay it.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                return await too_large.response()(scope, receive, send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _json_content_type(scope):
    """Every /v1/ body is JSON: one sent without a content type, or as curl's default form type, is read as JSON."""
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-type"]
    given = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-type"), b"")
    if given and not given.startswith(b"application/x-www-form-urlencoded"):
        return scope
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


class _SSEResponse(StreamingResponse):
    """A server-sent event stream whose `cleanup` runs however the response ends (finished,
    client gone, or never started)."""

    def __init__(self, content, cleanup: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._cleanup = cleanup

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cleanup()


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


class _ClientGone(Exception):
    pass


# ---------------------------------------------------------------------- one generation request
class _Generation:
    """The engine requests behind one HTTP request (one per prompt and sample) and their outputs."""

    def __init__(self, state: ServerState, request: Request, kind: str, prompts: list[list[int]],
                 params: list[SamplingParams], *, samples_per_prompt: int, strip_leading: bool):
        self.state, self.request, self.kind = state, request, kind
        self.prompts, self.params = prompts, params
        self.samples_per_prompt = samples_per_prompt
        self.strip_leading = strip_leading
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
        self.first_token_at: float | None = None
        self.sub: Submission | None = None
        self.done = False
        self._closed = False

    def submit(self) -> None:
        try:
            self.sub = self.state.loop.submit(list(zip(self.prompts, self.params)), self.id)
        except EngineStopped as e:
            raise APIError(503, str(e), "server_error", code="engine_unavailable") from None

    async def next(self, *, watch_disconnect: bool) -> tuple[int, RequestOutput]:
        """The next output of any of this request's engine requests."""
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise APIError(504, f"the request took longer than the server's limit of "
                                    f"{self.state.limits.request_timeout:g} s", "timeout_error", code="timeout")
            if not self.sub.queue.empty():  # already delivered: no need to wait (or create a task) for it
                index, item = self.sub.queue.get_nowait()
            else:
                wait = min(remaining, 1.0) if watch_disconnect else remaining
                try:
                    index, item = await asyncio.wait_for(self.sub.queue.get(), timeout=wait)
                except asyncio.TimeoutError:
                    if watch_disconnect and await self.request.is_disconnected():
                        raise _ClientGone() from None
                    continue
            if isinstance(item, BaseException):
                raise _engine_error(item)
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
                        "logprobs": None, "finish_reason": f} for i, (t, f) in enumerate(zip(self.text, self.finish))]
            return {**base, "object": "chat.completion", "system_fingerprint": None, "choices": choices,
                    "usage": self.usage()}
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": f}
                   for i, (t, f) in enumerate(zip(self.text, self.finish))]
        return {**base, "object": "text_completion", "choices": choices, "usage": self.usage()}


def _engine_error(exc: BaseException) -> APIError:
    if isinstance(exc, LmforgeError):
        return APIError(400, str(exc), param="prompt", code="invalid_prompt")
    if isinstance(exc, EngineStopped):
        return APIError(503, str(exc), "server_error", code="engine_unavailable")
    return APIError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error", code="internal_error")


# ---------------------------------------------------------------------- the app
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def create_app(model_dir: str | Path, *, api_keys: Iterable[str] = (), max_prompt_tokens: int | None = None,
               max_tokens_limit: int = 512, max_body_bytes: int = 1 << 20, max_concurrent: int = 64,
               request_timeout: float | None = 300.0, task_models: Mapping[str, str | Path] | None = None,
               max_slots: int = 16, max_num_batched_tokens: int | None = None, model_name: str | None = None,
               device: str = "cpu", dtype: str = "float32") -> FastAPI:
    """The FastAPI app serving the decoder run in `model_dir` (and task runs named by `task_models`).

    Limits: prompts of at most `max_prompt_tokens` tokens (default: the context length less one),
    `max_tokens` at most `max_tokens_limit`, bodies of at most `max_body_bytes`, at most
    `max_concurrent` requests in progress (429 beyond), `request_timeout` seconds per request (504).
    The engine runs `max_slots` requests at once, with weights and KV cache in `dtype` (float32 or
    bfloat16). Models are loaded here, so mistakes show up now.
    """
    from lmforge.api import load, pipeline

    for name, value in (("max_tokens_limit", max_tokens_limit), ("max_body_bytes", max_body_bytes),
                        ("max_concurrent", max_concurrent)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}", f"pass a positive --{name}")
    if max_prompt_tokens is not None and max_prompt_tokens < 1:
        raise ConfigError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}", "pass a positive value")
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}", "pass --dtype float32")
    model, tokenizer = load(model_dir, device=device)
    model = model.to(_DTYPES[dtype])
    engine = Engine(model, tokenizer, max_slots=max_slots,
                    max_num_batched_tokens=max_num_batched_tokens or max(512, max_slots))
    ctx = engine.scheduler.context_len
    limits = Limits(max_prompt_tokens=min(max_prompt_tokens or ctx - 1, ctx - 1),
                    max_tokens_limit=min(max_tokens_limit, ctx - 1), max_body_bytes=max_body_bytes,
                    max_concurrent=max_concurrent, request_timeout=request_timeout)
    tasks: dict[str, TaskModel] = {}
    for name, run_dir in (task_models or {}).items():
        if name not in TASKS:
            raise ConfigError(f"unknown task {name!r} for a task model", "use one of: " + ", ".join(TASKS))
        tasks[name] = TaskModel(name, str(run_dir), pipeline(name, run_dir, device=device))
    name = model_name or Path(model_dir).resolve().name
    if name in tasks:
        raise ConfigError(f"the generation model's name {name!r} is also a task name", "pass another model_name")
    state = ServerState(engine, name, limits, api_keys, tasks)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.loop.start()
        try:
            yield
        finally:
            state.loop.stop()

    app = FastAPI(title="lmforge", description=__doc__.split("\n\n")[0], lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    app.state.server = state
    app.add_middleware(_Guard, state=state)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return APIError(404, f"no route {request.method} {request.url.path}", code="not_found").response()
        if exc.status_code == 405:
            return APIError(405, f"{request.method} is not allowed on {request.url.path}",
                            code="method_not_allowed").response()
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return APIError(500, "internal server error", "server_error", code="internal_error").response()

    _add_generation_routes(app, state, tokenizer)
    _add_task_routes(app, state)
    _add_info_routes(app, state)
    return app


# ---------------------------------------------------------------------- generation
def _check_model(state: ServerState, model: str) -> None:
    if model == state.model_name:
        return
    if model in state.tasks:
        raise APIError(404, f"model {model!r} is a {model} model, which does not generate text; "
                            f"use POST /v1/{model}", param="model", code="model_not_found")
    raise APIError(404, f"the model {model!r} does not exist; this server serves {state.model_name!r}",
                   param="model", code="model_not_found")


def _sampling(state: ServerState, body, max_tokens: int, prompt_ids: list[list[int]], stop: list[str],
              param: str) -> list[SamplingParams]:
    limits = state.limits
    if max_tokens > limits.max_tokens_limit:
        raise APIError(400, f"max_tokens is {max_tokens} but this server allows at most {limits.max_tokens_limit}",
                       param="max_tokens", code="invalid_value")
    for ids in prompt_ids:
        if len(ids) > limits.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(ids)} tokens but this server accepts at most "
                                f"{limits.max_prompt_tokens}", param=param, code="context_length_exceeded")
        if len(ids) + max_tokens > state.context_len:
            raise APIError(400, f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                                f"model's context length of {state.context_len} tokens; lower max_tokens to at most "
                                f"{state.context_len - len(ids)}", param="max_tokens", code="context_length_exceeded")
    out = []
    for ids in prompt_ids:
        for j in range(body.n):
            seed = body.seed + j if body.seed is not None else None
            try:
                p = SamplingParams(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                                   repetition_penalty=body.repetition_penalty, max_new_tokens=max_tokens,
                                   stop=stop, seed=seed)
            except ConfigError as e:
                raise APIError(400, str(e), code="invalid_value") from None
            out.append(p)
    return out


def _add_generation_routes(app: FastAPI, state: ServerState, tokenizer) -> None:
    vocab = state.engine.vocab_size

    def encode(text: str) -> list[int]:
        try:
            return encode_prompt(tokenizer, text)
        except LmforgeError as e:
            raise APIError(400, str(e), param="prompt", code="invalid_prompt") from None

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        _check_model(state, body.model)
        prompts = []
        for p in body.prompts():
            if isinstance(p, str):
                prompts.append(encode(p))
            else:
                if any(t >= vocab for t in p):
                    raise APIError(400, f"prompt token ids must be below the vocabulary size {vocab}",
                                   param="prompt", code="invalid_prompt")
                prompts.append(list(p))
        if len(prompts) * body.n > 16:
            raise APIError(400, "a request may ask for at most 16 completions (prompts x n)", param="n")
        max_tokens = body.max_tokens if body.max_tokens is not None else 16
        params = _sampling(state, body, max_tokens, prompts, body.stop_list(), "prompt")
        prompts = [p for p in prompts for _ in range(body.n)]
        return await _run(state, request, "completion", prompts, params, body, strip_leading=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        _check_model(state, body.model)
        system = [m.text() for m in body.messages if m.role in ("system", "developer")]
        turns: list[tuple[str, str]] = []
        user: str | None = None
        for m in body.messages:
            if m.role == "user":
                user = m.text() if user is None else f"{user}\n{m.text()}"
            elif m.role == "assistant":
                turns.append((user or "", m.text().strip()))
                user = None
        if user is None:
            raise APIError(400, "the last non-system message must be from the user", param="messages",
                           code="invalid_value")
        ids = encode(format_transcript(turns, user.strip(), "\n\n".join(system) or None))
        limit = body.token_limit()
        max_tokens = limit if limit is not None else max(1, min(state.limits.max_tokens_limit,
                                                               state.context_len - len(ids)))
        stop = list(dict.fromkeys([*body.stop_list(), TURN_STOP]))
        params = _sampling(state, body, max_tokens, [ids], stop, "messages")
        return await _run(state, request, "chat", [ids] * body.n, params, body, strip_leading=True)


async def _run(state: ServerState, request: Request, kind: str, prompts: list[list[int]],
               params: list[SamplingParams], body, *, strip_leading: bool) -> Response:
    state.acquire()
    gen = _Generation(state, request, kind, prompts, params, samples_per_prompt=body.n,
                      strip_leading=strip_leading)
    streaming = False
    try:
        gen.submit()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            # The first output is awaited here so that a refused request still gets its own status code.
            first = await gen.next(watch_disconnect=True)
            response = _SSEResponse(_stream(gen, first, include_usage), gen.close)
            streaming = True
            return response
        while not gen.finished:
            index, out = await gen.next(watch_disconnect=True)
            gen.take(index, out)
        return JSONResponse(gen.body())
    except _ClientGone:
        return Response(status_code=499)
    finally:
        if not streaming:
            gen.close()


async def _stream(gen: _Generation, first: tuple[int, RequestOutput], include_usage: bool) -> AsyncIterator[str]:
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
        yield sse(error_body(e.message, e.type, e.param, e.code))
    if include_usage and gen.finished:
        yield sse(gen.usage_chunk())
    yield "data: [DONE]\n\n"


# ---------------------------------------------------------------------- task models
def _add_task_routes(app: FastAPI, state: ServerState) -> None:
    async def run_task(name: str, model: str | None, call: Callable[[], Any]) -> dict:
        task = state.tasks[name]
        if model is not None and model != name:
            raise APIError(404, f"the model {model!r} does not exist; /v1/{name} serves {name!r}", param="model",
                           code="model_not_found")
        state.acquire()
        start = time.monotonic()
        try:
            def locked():
                with task.lock:  # one batch at a time per model
                    return call()

            timeout = state.limits.request_timeout
            try:
                result = await asyncio.wait_for(asyncio.to_thread(locked), timeout if timeout else None)
            except asyncio.TimeoutError:
                raise APIError(504, f"the request took longer than the server's limit of {timeout:g} s",
                               "timeout_error", code="timeout") from None
            except LmforgeError as e:
                raise APIError(400, str(e), code="invalid_input") from None
        finally:
            state.release()
        state.metrics.latency.observe(time.monotonic() - start)
        results = result if isinstance(result, list) else [result]
        return {"object": "list", "model": name, "task": name, "data": _jsonable(results)}

    def text_route(name: str):
        async def route(body: TaskRequest):
            pipe = state.tasks[name].pipeline
            texts = [body.input] if isinstance(body.input, str) else list(body.input)
            # A list of texts is always several inputs, never one pre-split token list.
            kwargs = {"is_split_into_words": False} if name == "ner" else {}
            return await run_task(name, body.model, lambda: pipe(texts, **kwargs))

        route.__name__ = f"task_{name}"
        app.post(f"/v1/{name}")(route)

    for name in state.tasks:
        if name == "qa":
            @app.post("/v1/qa")
            async def qa(body: QARequest):
                pipe = state.tasks["qa"].pipeline
                q, c = body.question, body.context
                if isinstance(q, list) and isinstance(c, list) and len(q) != len(c):
                    raise APIError(400, f"got {len(q)} questions and {len(c)} contexts; pass as many of each "
                                        "(or one of either)", param="question", code="invalid_value")
                qs = [q] if isinstance(q, str) else list(q)
                cs = [c] if isinstance(c, str) else list(c)
                return await run_task("qa", body.model, lambda: pipe(question=qs, context=cs))
        else:
            text_route(name)


def _jsonable(value):
    """Plain JSON types (numpy and torch scalars become numbers)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


# ---------------------------------------------------------------------- information
def _add_info_routes(app: FastAPI, state: ServerState) -> None:
    def model_card(name: str, task: str | None = None) -> dict:
        card = {"id": name, "object": "model", "created": state.created, "owned_by": "lmforge"}
        if task:
            card["task"] = task
        return card

    @app.get("/v1/models")
    async def models():
        return {"object": "list",
                "data": [model_card(state.model_name, "text-generation"),
                         *(model_card(t, t) for t in state.tasks)]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        if model_id == state.model_name:
            return model_card(model_id, "text-generation")
        if model_id in state.tasks:
            return model_card(model_id, model_id)
        raise APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")

    @app.get("/health")
    async def health():
        s = state.loop.stats()
        body = {"status": "ok" if state.loop.alive else "error", "model": state.model_name,
                "tasks": sorted(state.tasks), "context_length": state.context_len,
                "max_tokens_limit": state.limits.max_tokens_limit, "auth": bool(state.api_keys),
                "running": s.num_running, "waiting": s.num_waiting + state.loop.queued()}
        return JSONResponse(body, 200 if state.loop.alive else 503)

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(_render_metrics(state), media_type="text/plain; version=0.0.4; charset=utf-8")

    page = files("lmforge.serve").joinpath("static/playground.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(page, headers={
            "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                       "style-src 'self' 'unsafe-inline'; img-src 'self' data:",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})


def _render_metrics(state: ServerState) -> str:
    s = state.loop.stats()
    m = state.metrics
    lines: list[str] = []

    def one(name: str, kind: str, help: str, value: float) -> None:
        lines.extend([f"# HELP {name} {help}", f"# TYPE {name} {kind}", f"{name} {value:g}"])

    one("lmforge_queue_length", "gauge", "Requests waiting for a KV cache slot.", s.num_waiting + state.loop.queued())
    one("lmforge_running_requests", "gauge", "Requests being generated (holding a KV cache slot).", s.num_running)
    one("lmforge_requests_in_progress", "gauge", "HTTP requests being handled (generation and tasks).", state.active)
    one("lmforge_max_concurrent_requests", "gauge", "Requests in progress beyond which new ones get 429.",
        state.limits.max_concurrent)
    one("lmforge_kv_cache_usage_ratio", "gauge", "Cached positions over KV cache capacity.", s.kv_cache_usage)
    one("lmforge_tokens_generated_total", "counter", "Tokens sampled since the server started.", s.generation_tokens)
    one("lmforge_prompt_tokens_total", "counter", "Prompt tokens computed since the server started.", s.prompt_tokens)
    one("lmforge_tokens_per_second", "gauge", f"Tokens generated per second over the last "
                                              f"{state.loop.rate_window_s:g} s.", state.loop.tokens_per_second())
    one("lmforge_engine_requests_finished_total", "counter", "Engine requests that finished.", s.requests_finished)
    one("lmforge_engine_requests_aborted_total", "counter", "Engine requests aborted (client gone, timeout).",
        s.requests_aborted)
    one("lmforge_engine_steps_total", "counter", "Engine steps run.", s.num_steps)
    lines += m.latency.render("lmforge_request_latency_seconds", "Time from arrival to the last token of "
                                                                  "successful requests.")
    lines += m.ttft.render("lmforge_time_to_first_token_seconds", "Time from arrival to the first generated token.")
    lines += ["# HELP lmforge_http_responses_total HTTP responses by endpoint and status code.",
              "# TYPE lmforge_http_responses_total counter"]
    for (endpoint, status), n in sorted(m.responses.items()):
        lines.append(f'lmforge_http_responses_total{{endpoint="{endpoint}",status="{status}"}} {n}')
    return "\n".join(lines) + "\n"

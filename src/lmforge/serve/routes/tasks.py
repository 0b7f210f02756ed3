"""`POST /v1/<task>` for each fine-tuned run a server loads: `{"input": text or texts}` (or, for qa,
`{"question", "context"}`) -> `{"object": "list", "model", "task", "data": [result, ...]}`.
Task models run in worker threads, one batch at a time per model."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from fastapi import FastAPI

from lmforge.errors import LmforgeError
from lmforge.serve.errors import APIError, timeout_error
from lmforge.serve.schemas import QARequest, TaskRequest
from lmforge.serve.state import ServerState

# A list of texts sent to a route is always several inputs, never one pre-split token list.
TEXT_LIST_OPTIONS: dict[str, dict[str, Any]] = {"ner": {"is_split_into_words": False}}


def jsonable(value):
    """Plain JSON types (numpy and torch scalars become numbers)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


async def run_task(state: ServerState, name: str, model: str | None, call: Callable[[], Any]) -> dict:
    """Run `call` (the task's pipeline on the request's inputs) in a worker thread, within the limits."""
    task = state.tasks[name]
    if model is not None and model != name:
        raise APIError(404, f"the model {model!r} does not exist; /v1/{name} serves {name!r}", param="model",
                       code="model_not_found")
    state.acquire()
    start = time.monotonic()
    try:
        def locked():
            with task.lock:
                return call()

        timeout = state.limits.request_timeout
        try:
            result = await asyncio.wait_for(asyncio.to_thread(locked), timeout if timeout else None)
        except asyncio.TimeoutError:
            raise timeout_error(timeout) from None
        except LmforgeError as e:
            raise APIError(400, str(e), code="invalid_input") from None
    finally:
        state.release()
    state.metrics.latency.observe(time.monotonic() - start)
    results = result if isinstance(result, list) else [result]
    return {"object": "list", "model": name, "task": name, "data": jsonable(results)}


def _add_text_route(app: FastAPI, state: ServerState, name: str) -> None:
    options = TEXT_LIST_OPTIONS.get(name, {})

    async def route(body: TaskRequest):
        pipe = state.tasks[name].pipeline
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        return await run_task(state, name, body.model, lambda: pipe(texts, **options))

    route.__name__ = f"task_{name}"
    app.post(f"/v1/{name}")(route)


def _add_question_route(app: FastAPI, state: ServerState, name: str) -> None:
    async def route(body: QARequest):
        pipe = state.tasks[name].pipeline
        q, c = body.question, body.context
        if isinstance(q, list) and isinstance(c, list) and len(q) != len(c):
            raise APIError(400, f"got {len(q)} questions and {len(c)} contexts; pass as many of each "
                                "(or one of either)", param="question", code="invalid_value")
        qs = [q] if isinstance(q, str) else list(q)
        cs = [c] if isinstance(c, str) else list(c)
        return await run_task(state, name, body.model, lambda: pipe(question=qs, context=cs))

    route.__name__ = name
    app.post(f"/v1/{name}")(route)


# The body a task's route reads; tasks not named here take `{"input": text or texts}`.
ROUTE_BUILDERS: dict[str, Callable[[FastAPI, ServerState, str], None]] = {"qa": _add_question_route}


def add_task_routes(app: FastAPI, state: ServerState) -> None:
    for name in state.tasks:
        ROUTE_BUILDERS.get(name, _add_text_route)(app, state, name)

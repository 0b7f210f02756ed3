"""What a server tells about itself: `GET /v1/models` and `/v1/models/{id}`, `GET /health`,
`GET /metrics` (Prometheus text format) and the web playground at `/`."""
from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from lmforge.serve.errors import APIError
from lmforge.serve.metrics import CONTENT_TYPE
from lmforge.serve.state import ServerState
from lmforge.serve.task_endpoints import explainable_tasks

GENERATION = "text-generation"
PLAYGROUND_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def model_card(state: ServerState, name: str, task: str | None = None) -> dict:
    card = {"id": name, "object": "model", "created": state.created, "owned_by": "lmforge"}
    if task:
        card["task"] = task
    return card


def health_body(state: ServerState) -> dict:
    s = state.loop.stats()
    return {"status": "ok" if state.loop.alive else "error", "model": state.model_name,
            "tasks": sorted(state.tasks), "explain": explainable_tasks(state.tasks), "context_length": state.context_len,
            "max_tokens_limit": state.limits.max_tokens_limit, "auth": bool(state.api_keys),
            "running": s.num_running, "waiting": s.num_waiting + state.loop.queued()}


def render_metrics(state: ServerState) -> str:
    """Engine gauges and counters, the histograms and the response counts, in Prometheus text format."""
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


def add_model_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/v1/models")
    async def models():
        return {"object": "list",
                "data": [model_card(state, state.model_name, GENERATION),
                         *(model_card(state, t, t) for t in state.tasks)]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        if model_id == state.model_name:
            return model_card(state, model_id, GENERATION)
        if model_id in state.tasks:
            return model_card(state, model_id, model_id)
        raise APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")


def add_status_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health():
        return JSONResponse(health_body(state), 200 if state.loop.alive else 503)

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(render_metrics(state), media_type=CONTENT_TYPE)

    page = files("lmforge.serve").joinpath("static/playground.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(page, headers=PLAYGROUND_HEADERS)

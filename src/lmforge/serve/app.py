"""An OpenAI-compatible HTTP server over the continuous-batching engine.

    app = create_app("runs/demo", api_keys=["secret"], task_models={"classify": "runs/sentiment"})
    app = create_app(ServeConfig("runs/demo", api_keys=("secret",)))  # the same, settings in one object
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints: `POST /v1/completions` and `POST /v1/chat/completions` (with `"stream": true` as
server-sent events ending in `data: [DONE]`; `echo` and `logprobs` score tokens), `POST /tokenize`,
`POST /detokenize` and `GET /tokenizer_info` (the model's tokenizer), `GET /v1/models`, one route per loaded task model
(`/v1/classify`, `/v1/ner`, `/v1/qa`, `/v1/translate`, `/v1/summarize`), `GET /health`,
`GET /metrics` (Prometheus text format) and the web playground at `/`.

Every generation request goes to the engine, which one background thread drives; task models
run in worker threads. API keys (when given) guard every `/v1/` route and the tokenizer routes; `/`, `/health` and
`/metrics` stay open so probes and scrapers need no key. Every error is OpenAI's error JSON
`{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx status.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI

from lmforge.infer.engine import Engine
from lmforge.errors import ConfigError
from lmforge.runs.rundir import NotAGeneratorError, load
from lmforge.serve.config import ServeConfig
from lmforge.serve.errors import install_error_handlers
from lmforge.serve.middleware import Guard
from lmforge.serve.routes.chat import add_chat_routes
from lmforge.serve.routes.completions import add_completion_routes
from lmforge.serve.routes.info import add_model_routes, add_status_routes
from lmforge.serve.routes.tasks import add_task_routes
from lmforge.serve.routes.tokenize import add_tokenizer_routes
from lmforge.serve.state import ServerState
from lmforge.serve.task_endpoints import load_task_endpoints


def create_app(config: ServeConfig | str | Path, **settings) -> FastAPI:
    """The FastAPI app serving `config` (see `ServeConfig`): either a ServeConfig, or the decoder
    run's directory followed by ServeConfig's settings as keywords (`api_keys=`, `task_models=`,
    `max_slots=`, limits...). Models are loaded here, so mistakes show up now."""
    if not isinstance(config, ServeConfig):
        config = ServeConfig(config, **settings)
    elif settings:
        raise TypeError(f"create_app got a ServeConfig and settings besides it ({', '.join(settings)}); "
                        "put them in the ServeConfig")
    state, tokenizer = load_state(config)
    app = FastAPI(title="lmforge", description=__doc__.split("\n\n")[0], lifespan=_lifespan(state), docs_url=None,
                  redoc_url=None)
    app.state.server = state
    app.add_middleware(Guard, state=state)
    install_error_handlers(app)
    add_completion_routes(app, state, tokenizer)
    add_chat_routes(app, state, tokenizer)
    add_tokenizer_routes(app, state, tokenizer)
    add_task_routes(app, state)
    add_model_routes(app, state)
    add_status_routes(app, state)
    return app


def load_state(config: ServeConfig) -> tuple[ServerState, object]:
    """(the state every handler shares, the generating model's tokenizer), with every model loaded."""
    try:
        model, tokenizer = load(config.model, device=config.device)
    except NotAGeneratorError as e:
        raise ConfigError(e.what, f"serve it as a task route, `--task_model {e.task}={e.run_dir}`, beside a --model "
                                  "that generates text (a pretrained GPT run or a chat fine-tune)") from None
    model = model.to(config.torch_dtype)
    engine = Engine(model, tokenizer, max_slots=config.max_slots, max_num_batched_tokens=config.batched_tokens())
    limits = config.limits(engine.scheduler.context_len)
    tasks = load_task_endpoints(config.task_models, device=config.device)
    return ServerState(engine, config.served_name, limits, config.api_keys, tasks), tokenizer


def _lifespan(state: ServerState):
    """The engine thread runs while the app is served."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.loop.start()
        try:
            yield
        finally:
            state.loop.stop()

    return lifespan

"""What every handler shares: the engine loop, the task endpoints, the limits and the metrics."""
from __future__ import annotations

import time
from typing import Iterable

from lmforge.infer.engine import Engine
from lmforge.serve.config import Limits
from lmforge.serve.engine_loop import EngineLoop
from lmforge.serve.errors import APIError
from lmforge.serve.metrics import Metrics
from lmforge.serve.task_endpoints import TaskEndpoint


class ServerState:
    """The engine (driven by one background thread), task endpoints, limits, API keys and metrics."""

    def __init__(self, engine: Engine, model_name: str, limits: Limits, api_keys: Iterable[str],
                 tasks: dict[str, TaskEndpoint]):
        self.engine = engine
        self.loop = EngineLoop(engine)
        self.model_name = model_name
        self.limits = limits
        self.api_keys = [k.encode() for k in api_keys if k]
        self.tasks = tasks
        self.metrics = Metrics()
        self.created = int(time.time())
        self.context_len = engine.scheduler.context_len
        self.active = 0  # requests in progress, held to limits.max_concurrent

    def acquire(self) -> None:
        """Count one more request in progress, or refuse it with 429 at the limit."""
        if self.active >= self.limits.max_concurrent:
            raise APIError(429, f"the server is handling {self.limits.max_concurrent} requests, its limit; "
                                "retry shortly", "rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"})
        self.active += 1

    def release(self) -> None:
        self.active -= 1

    def deadline(self) -> float:
        """The monotonic time by which a request arriving now must be answered."""
        t = self.limits.request_timeout
        return time.monotonic() + t if t is not None and t > 0 else float("inf")

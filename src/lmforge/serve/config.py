"""Every setting of a server, checked in one place before any model is loaded.

    config = ServeConfig("runs/demo", api_keys=("secret",), task_models={"classify": "runs/sentiment"})
    app = create_app(config)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch

from lmforge.errors import ConfigError
from lmforge.tasks import routed_tasks

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Limits:
    """The limits requests are held to, once the served model's context length is known."""

    max_prompt_tokens: int
    max_tokens_limit: int
    max_body_bytes: int
    max_concurrent: int
    request_timeout: float | None
    max_logprobs: int = 20


@dataclass
class ServeConfig:
    """What `create_app` serves and how.

    `model` is the decoder run to generate with; `task_models` maps task names (`classify`, `ner`,
    `qa`, `translate`, `summarize`) to fine-tuned runs served at `/v1/<task>`. API keys (when given)
    guard every `/v1/` route. Limits: prompts of at most `max_prompt_tokens` tokens (default: the
    context length less one), `max_tokens` at most `max_tokens_limit`, bodies of at most
    `max_body_bytes`, at most `max_concurrent` requests in progress (429 beyond), `request_timeout`
    seconds per request (504), at most `max_logprobs` alternatives per scored token. The engine runs `max_slots` requests at once, with weights and KV
    cache in `dtype` (float32 or bfloat16) on `device`. `model_name` is the id clients ask for
    (default: the run directory's name).
    """

    model: str | Path
    api_keys: Iterable[str] = ()
    task_models: Mapping[str, str | Path] | None = None
    max_slots: int = 16
    max_prompt_tokens: int | None = None
    max_tokens_limit: int = 512
    max_body_bytes: int = 1 << 20
    max_concurrent: int = 64
    request_timeout: float | None = 300.0
    max_num_batched_tokens: int | None = None
    model_name: str | None = None
    max_logprobs: int = 20
    device: str = "cpu"
    dtype: str = "float32"
    served_name: str = field(init=False)

    def __post_init__(self) -> None:
        self.api_keys = tuple(self.api_keys or ())
        self.task_models = dict(self.task_models or {})
        self.served_name = self.model_name or Path(self.model).resolve().name
        self._check()

    def _check(self) -> None:
        for name, value in (("max_tokens_limit", self.max_tokens_limit), ("max_body_bytes", self.max_body_bytes),
                            ("max_concurrent", self.max_concurrent)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}", f"pass a positive --{name}")
        if self.max_logprobs < 0:
            raise ConfigError(f"max_logprobs must be >= 0, got {self.max_logprobs}", "pass e.g. --max_logprobs 20")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ConfigError(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}", "pass a positive value")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}", "pass --dtype float32")
        tasks = routed_tasks()
        for name in self.task_models:
            if name not in tasks:
                raise ConfigError(f"unknown task {name!r} for a task model", "use one of: " + ", ".join(tasks))
        if self.served_name in self.task_models:
            raise ConfigError(f"the generation model's name {self.served_name!r} is also a task name",
                              "pass another model_name")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def batched_tokens(self) -> int:
        """The engine's token budget per step."""
        return self.max_num_batched_tokens or max(512, self.max_slots)

    def limits(self, context_len: int) -> Limits:
        """The request limits for a model of `context_len` positions (a prompt leaves room for one token)."""
        longest = context_len - 1
        return Limits(max_prompt_tokens=min(self.max_prompt_tokens or longest, longest),
                      max_tokens_limit=min(self.max_tokens_limit, longest), max_body_bytes=self.max_body_bytes,
                      max_concurrent=self.max_concurrent, request_timeout=self.request_timeout,
                      max_logprobs=self.max_logprobs)

"""The one list of application tasks: each task module registers its class here on import.

Fine-tuning, prediction, pipelines and the server's task routes all look tasks up by name here,
so a new task is available everywhere once its module registers it (and `lmforge.tasks` imports it).
"""
from __future__ import annotations

from lmforge.errors import ConfigError

TASKS: dict[str, type] = {}
PIPELINE_NAMES: dict[str, str] = {}  # the names `lmforge.pipeline` accepts -> task name


def register_task(*pipeline_names: str):
    """Class decorator: register a task under its `name` and the pipeline names given (as in
    transformers' `pipeline`, e.g. "sentiment-analysis" for classify)."""

    def register(cls: type) -> type:
        if cls.name in TASKS:
            raise ValueError(f"task {cls.name!r} is registered twice")
        TASKS[cls.name] = cls
        for alias in (cls.name, *pipeline_names):
            if alias in PIPELINE_NAMES:
                raise ValueError(f"pipeline name {alias!r} is registered twice")
            PIPELINE_NAMES[alias] = cls.name
        return cls

    return register


def task_class(name: str) -> type:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}", f"choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def task_for_pipeline(name: str) -> str:
    if name not in PIPELINE_NAMES:
        raise ConfigError(f"unknown pipeline task {name!r}", "choose one of: " + ", ".join(sorted(PIPELINE_NAMES)))
    return PIPELINE_NAMES[name]


def routed_tasks() -> tuple[str, ...]:
    """Tasks the server offers as `/v1/<task>` routes for fine-tuned runs."""
    return tuple(name for name, cls in TASKS.items() if cls.served_as_route)

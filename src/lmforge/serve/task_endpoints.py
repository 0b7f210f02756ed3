"""The fine-tuned runs a server offers at `/v1/<task>`, each behind its own lock."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from lmforge.runs.explain_subjects import EXPLAINED_TASKS
from lmforge.runs.predict import TaskPipeline, pipeline


@dataclass
class TaskEndpoint:
    """The run behind `/v1/<name>`; `pipeline` maps plain inputs to plain results."""

    name: str
    run_dir: str
    pipeline: TaskPipeline | Callable
    lock: threading.Lock = field(default_factory=threading.Lock)  # one batch at a time per model


def load_task_endpoints(task_models: Mapping[str, str | Path], *, device: str = "cpu") -> dict[str, TaskEndpoint]:
    """One endpoint per task name, each run checked to have been fine-tuned for its task."""
    return {name: TaskEndpoint(name, str(run_dir), pipeline(name, run_dir, device=device))
            for name, run_dir in task_models.items()}


def explainable_tasks(tasks: Mapping[str, TaskEndpoint]) -> list[str]:
    """The served task models `/v1/explain` can read: classifiers and taggers."""
    return sorted(name for name, endpoint in tasks.items()
                  if isinstance(endpoint.pipeline, TaskPipeline) and endpoint.pipeline.task.name in EXPLAINED_TASKS)

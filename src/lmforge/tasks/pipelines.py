"""`lmforge.pipeline(task, model=RUN)`: plain Python in, plain Python out, over a fine-tuned run."""
from __future__ import annotations

from pathlib import Path

import torch

from lmforge.errors import ConfigError


class TaskPipeline:
    """Calls `task.pipeline_examples(*args, **kwargs)` -> `task.predict` -> `task.pipeline_result` per example.

    A single input gives a single result; a list gives a list.
    """

    def __init__(self, model, task, batch_size: int = 32):
        self.model, self.task, self.batch_size = model, task, batch_size

    def __call__(self, *args, **kwargs):
        examples, single = self.task.pipeline_examples(*args, **kwargs)
        with torch.no_grad():
            answers = self.task.predict(self.model, examples, batch_size=self.batch_size)
        results = [self.task.pipeline_result(a, e) for a, e in zip(answers, examples)]
        return results[0] if single else results


class _GenerationPipeline:
    """text-generation over a pretrained (not fine-tuned) decoder run: prompt -> continuation."""

    def __init__(self, run_dir, *, device: str = "cpu", **defaults):
        from lmforge.api import load

        self.model, self.tokenizer = load(run_dir, device=device)
        self.defaults = {"max_new_tokens": 64, "temperature": 0.0, **defaults}

    def __call__(self, prompts, **sampling):
        from lmforge.infer.generate import generate_text
        from lmforge.infer.sampling import SamplingParams

        single = isinstance(prompts, str)
        rows = generate_text(self.model, self.tokenizer, [prompts] if single else list(prompts),
                             SamplingParams(**{**self.defaults, **sampling}))
        texts = [r[0] for r in rows]
        return texts[0] if single else texts


def build_pipeline(task: str, run_dir: str | Path, *, batch_size: int = 32, device: str = "cpu"):
    import json

    from lmforge.tasks.finetune import load_task_run

    run_dir = Path(run_dir)
    cfg_file = run_dir / "config.json"
    if task == "chat" and cfg_file.is_file() and json.loads(cfg_file.read_text()).get("family") != "task":
        return _GenerationPipeline(run_dir, device=device)
    model, task_obj = load_task_run(run_dir, device=device)
    if model.config.task != task:
        raise ConfigError(f"{run_dir} was fine-tuned for {model.config.task!r}, not {task!r}",
                          f"use the pipeline for {model.config.task!r} or a run tuned for {task!r}")
    return TaskPipeline(model, task_obj, batch_size)

"""`lmforge eval harness`: lm-evaluation-harness tasks on a run's decoder, in process, results into the run.

    evaluate_harness("runs/gpt", ["lmforge_sentiment_mc"], include_path="tests/harness/tasks", limit=20)

Task names are checked before the model is loaded: the YAMLs under `include_path` are indexed first, and
lm-eval's built-in tasks (thousands of YAMLs, seconds to index) only when a name is not among them. The
evaluation is lm-eval's own (`simple_evaluate`) over `harness_model`; what it returns is written into
`RUN/lm_eval/` as lm-eval's command line writes it: `results_<time>.json` (metrics, task configs, versions)
and one `samples_<task>_<time>.jsonl` per task (each example's requests, responses and metrics).
"""
from __future__ import annotations

import difflib
import json
import time
from pathlib import Path
from typing import Sequence

from lmforge.atomic import write_json_atomic, write_text_atomic
from lmforge.errors import CheckpointError, ConfigError
from lmforge.runs.harness_model import harness_model, require_lm_eval
from lmforge.runs.rundir import load

RESULTS_DIR = "lm_eval"


def task_names(tasks: str | Sequence[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise ConfigError("no lm-eval task was named", "pass --tasks NAME[,NAME...]")
    return names


def task_manager(names: list[str], include_path: str | Path | None):
    """An lm-eval TaskManager that knows every one of `names`; raises for a name it does not know."""
    from lm_eval.tasks import TaskManager  # optional, and slow to import

    if include_path is not None:
        if not Path(include_path).is_dir():
            raise ConfigError(f"--include_path {include_path} is not a folder", "pass the folder holding task YAMLs")
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if not _unknown(local, names):
            return local
    manager = TaskManager(include_path=str(include_path) if include_path is not None else None)
    unknown = _unknown(manager, names)
    if unknown:
        close = difflib.get_close_matches(unknown[0], manager.all_tasks, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"unknown lm-eval task {unknown[0]!r}",
                          f"{hint}list the tasks with `lm_eval ls tasks`, or pass --include_path DIR with its YAML")
    return manager


def _unknown(manager, names: list[str]) -> list[str]:
    return [n for n in names if not manager.match_tasks([n])]


def evaluate_harness(run_dir: str | Path, tasks: str | Sequence[str], *, include_path: str | Path | None = None,
                     num_fewshot: int | None = None, limit: int | float | None = None, batch_size: int = 16,
                     device: str = "cpu", seed: int = 1234) -> dict:
    """lm-eval's results for `tasks` on the decoder of `run_dir`; written into `run_dir/lm_eval/`.

    Returns lm-eval's result dictionary (without the per-example samples) plus `results_path`."""
    require_lm_eval()
    from lm_eval import simple_evaluate  # optional, and slow to import

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist", "pass the directory of a trained run")
    names = task_names(tasks)
    if num_fewshot is not None and num_fewshot < 0:
        raise ConfigError(f"num_fewshot must be >= 0, got {num_fewshot}", "pass e.g. --num_fewshot 5")
    if limit is not None and limit <= 0:
        raise ConfigError(f"limit must be positive, got {limit}", "pass a number of examples per task")
    manager = task_manager(names, include_path)
    model, tokenizer = load(run_dir, device=device)
    lm = harness_model(model, tokenizer, batch_size=batch_size)
    results = simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                              log_samples=True, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed)
    return write_results(run_dir / RESULTS_DIR, dict(results))


def write_results(folder: Path, results: dict) -> dict:
    """`results_<time>.json` and one `samples_<task>_<time>.jsonl` per task in `folder`; returns the results
    without samples, with `results_path`."""
    from lm_eval.utils import handle_non_serializable  # optional, and slow to import

    stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
    samples = results.pop("samples", None) or {}
    for task, rows in samples.items():
        lines = [json.dumps(as_logged(row), default=handle_non_serializable, ensure_ascii=False) for row in rows]
        write_text_atomic(folder / f"samples_{task}_{stamp}.jsonl", "\n".join(lines) + "\n")
    path = folder / f"results_{stamp}.json"
    write_json_atomic(path, json.loads(json.dumps(results, default=handle_non_serializable)))
    return {**results, "results_path": str(path)}


def as_logged(sample: dict) -> dict:
    """One example as lm-eval's command line logs it (its EvaluationTracker): each request's arguments as
    {"gen_args_I": {"arg_J": ...}}, responses as strings, the target as a string."""
    from lm_eval.utils import sanitize_list  # optional, and slow to import

    arguments = {f"gen_args_{i}": {f"arg_{j}": a for j, a in enumerate(args)}
                 for i, args in enumerate(sample["arguments"])}
    return {**sample, "arguments": arguments, "resps": sanitize_list(sample["resps"]),
            "filtered_resps": sanitize_list(sample["filtered_resps"]), "target": str(sample["target"])}

"""The one run harness every training workflow goes through:

    check the run directory -> start the process group -> build the job -> config.yaml + tokenizer.json
      -> fit (the trainer, or a count-based fit) -> summary.json -> plots -> close the process group

A workflow (`pretrain`, `finetune`) only says how to build its job from the data and the model;
what a run directory contains, when it may be removed after a failed start, and how a run resumes
is decided here, once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch.nn as nn

from lmforge.atomic import RunDirectory, write_json_atomic, write_text_atomic
from lmforge.config import PrivacyConfig, TrainConfig, to_yaml
from lmforge.errors import ConfigError
from lmforge.parallel import DistInfo, broadcast_object, init_distributed, shutdown_distributed
from lmforge.runs.rundir import check_run_dir
from lmforge.train.metrics_log import plot_losses
from lmforge.train.trainer import Trainer


@dataclass
class TrainingJob:
    """What a workflow hands the harness once its model, data and objective are ready."""

    model: nn.Module
    objective: object                         # an Objective (a Task is one): the loss the trainer minimises
    loader: object                            # next_batch() / state_dict() / load_state_dict()
    evaluate: Callable[[nn.Module], dict]     # validation figures of the model as it is now
    recipe: dict                              # the resolved recipe, written as config.yaml
    save_tokenizer: Callable[[Path], None]    # writes tokenizer.json into the run directory
    fit: Callable[[], dict] | None = None     # replaces the trainer (count-based models)
    on_step: Callable | None = None           # the trainer's per-step hook (e.g. a time budget)
    privacy: PrivacyConfig | None = None      # DP-SGD settings (lmforge.train.privacy), when enabled
    trainer: Trainer | None = field(default=None, init=False)  # set once the trainer exists


def run_training(out: str | Path, train: TrainConfig, *, resume: bool,
                 build: Callable[[DistInfo, Path], TrainingJob],
                 finish: Callable[[TrainingJob, dict], dict]) -> dict:
    """Run `build(dist, run_dir)`'s job into the run directory `out` and return its summary.

    `finish(job, summary)` runs on the writing rank after fitting and returns the summary to save
    (the workflow's own figures added). A start that fails before fitting removes what it wrote."""
    run_dir = check_run_dir(out, resume)
    dist = init_distributed(train.device)
    run = RunDirectory(run_dir, owner=dist.is_main)
    broadcast_object(None, dist)  # every rank checks the run directory before rank 0 writes to it
    try:
        with run:
            job = build(dist, run_dir)
            if dist.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                write_text_atomic(run_dir / "config.yaml", to_yaml(job.recipe))
                job.save_tokenizer(run_dir)
            summary = _fit(job, train, run_dir, dist, run, resume)
            if dist.is_main:
                summary = finish(job, summary)
                write_json_atomic(run_dir / "summary.json", summary)
                plot_losses(run_dir)
            return summary
    finally:
        shutdown_distributed()


def _fit(job: TrainingJob, train: TrainConfig, run_dir: Path, dist: DistInfo, run: RunDirectory,
         resume: bool) -> dict:
    if job.fit is not None:
        if train.parallel == "fsdp":
            raise ConfigError("a model fitted by counting (n-gram) has no weights for FSDP to shard",
                              "drop --train.parallel fsdp for this model")
        run.started()
        return job.fit()
    job.trainer = Trainer(job.model, job.loader, train, run_dir, dist=dist, objective=job.objective,
                          evaluate=job.evaluate, on_step=job.on_step, privacy=job.privacy)
    run.started()
    return job.trainer.fit(resume=resume)

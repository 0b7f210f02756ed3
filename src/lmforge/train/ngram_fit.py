"""Fitting a count-based n-gram model into a run directory, in place of the training loop.

The counts come from one pass over the training tokens; the model is then scored with the
same validation evaluator as a neural model, so their val_loss / val_ppl / val_bpb compare.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lmforge.models.registry import save_model


def fit_ngram(model, train_tokens, run_dir: str | Path, *, evaluate: Callable[[torch.nn.Module], dict],
              save: bool = True) -> dict:
    """Fit `model` (an `NGramLM`) on `train_tokens`, evaluate it, and write model.safetensors,
    config.json and metrics.jsonl into `run_dir` (when `save`). Returns the run summary, with
    the keys a trainer's summary has."""
    run_dir = Path(run_dir)
    start = time.perf_counter()
    model.fit(np.asarray(train_tokens))
    fit_seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        figures = evaluate(model)
    wall = time.perf_counter() - start
    if save:
        save_model(model, run_dir)
        # One record: a fitted n-gram model has no steps, only its final validation figures.
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 0, **figures, "elapsed": wall}) + "\n")
    tokens = int(len(train_tokens))
    return {
        "steps": 0, "tokens": tokens, "wall_seconds": round(wall, 3), "fit_seconds": round(fit_seconds, 3),
        "tokens_per_second": tokens / fit_seconds if fit_seconds else None,
        "train_loss": None, "val_loss": figures.get("val_loss"), "val_ppl": figures.get("val_ppl"),
        "val_bpb": figures.get("val_bpb"), "initial_val_loss": None, "best_val_loss": figures.get("val_loss"),
        "stop_reason": "fitted", "tokens_per_step": None, "precision": "fp64", "world_size": 1,
        "ngrams": model.num_ngrams(), "table_sizes": list(model.config.table_sizes),
    }

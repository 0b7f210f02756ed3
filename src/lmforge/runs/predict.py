"""Applying fine-tuned runs: `lmforge predict` over a file of examples, and `lmforge.pipeline` over
plain Python values (like transformers' `pipeline`)."""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from lmforge.atomic import atomic_path
from lmforge.config import AugmentConfig
from lmforge.data.formats import formats_for
from lmforge.errors import ConfigError, DataError
from lmforge.infer.generate import generate_text
from lmforge.infer.sampling import SamplingParams
from lmforge.models.registry import traits_of
from lmforge.runs.rundir import load, load_task_run, read_model_config
from lmforge.tasks import task_for_pipeline
from lmforge.tasks.base import Task

# A file name ending the readers recognise, for examples piped in on standard input.
_STDIN_SUFFIX = {"squad": ".json", "alpaca": ".json", "jsonl": ".jsonl", "tsv": ".tsv", "csv": ".csv",
                 "conll": ".conll", "bmes": ".bmes"}


def predict(model: str | Path, input: str, *, output: str = "-", format: str | None = None,
            batch_size: int = 32, device: str = "cpu") -> int:
    """Answers of a fine-tuned run for every example in `input` (a file, or - for stdin), one JSON
    object per line in input order, to `output` (a file written atomically, or - for stdout)."""
    net, task = load_task_run(model, device=device)
    if format:
        task.data = replace(task.data, format=format)
    elif task.data.format == "parallel":
        task.data = replace(task.data, format="auto")
    source = input
    if input == "-":
        tmp = tempfile.NamedTemporaryFile("w", suffix=_STDIN_SUFFIX.get(task.data.format, ".txt"), delete=False,
                                          encoding="utf-8")
        tmp.write(sys.stdin.read())
        tmp.close()
        source = tmp.name
    try:
        examples = _read_inputs(task, source, input, chosen=bool(format))
        with torch.no_grad():
            answers = task.predict(net, examples, batch_size=batch_size)
    finally:
        if input == "-":
            Path(source).unlink(missing_ok=True)
    lines = "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers)
    if output == "-":
        sys.stdout.write(lines)
    else:
        with atomic_path(Path(output)) as tmp_out:
            Path(tmp_out).write_text(lines, encoding="utf-8")
    return len(answers)


def _read_inputs(task: Task, source: str, name: str, *, chosen: bool) -> list[dict]:
    """The examples of `source`. A classifier trained on `<label> <text>` lines also reads plain text:
    when the format was not chosen and the first words are mostly not its labels, each line is one
    unlabelled text (so no word of the input is taken for a label and dropped), and a note says so."""
    plain_text_possible = "text" in formats_for(task.reader_task)  # classifiers: one text per line
    if chosen or not plain_text_possible or not task.labels or task.data.format not in ("label_text", "auto"):
        return task.read(source, require_labels=False)
    try:
        examples = task.read(source, require_labels=False)
    except DataError:
        examples = None
    labelled = examples is not None and all(e.get("label") is not None for e in examples)
    if labelled and sum(str(e["label"]) in task.labels for e in examples) * 2 > len(examples):
        return examples
    shown = ", ".join(task.labels[:6]) + (", ..." if len(task.labels) > 6 else "")
    print(f"note: the first words of {name} are not this run's labels ({shown}); each line is read as one "
          "unlabelled text (pass --format label_text to read them as labels)", file=sys.stderr, flush=True)
    task.data = replace(task.data, format="text")
    return task.read(source, require_labels=False)


class TaskPipeline:
    """Calls `task.pipeline_examples(*args, **kwargs)` -> `task.predict` -> `task.pipeline_result` per example.

    A single input gives a single result; a list gives a list.
    """

    def __init__(self, model, task: Task, batch_size: int = 32):
        self.model, self.task, self.batch_size = model, task, batch_size

    def __call__(self, *args, **kwargs):
        examples, single = self.task.pipeline_examples(*args, **kwargs)
        with torch.no_grad():
            answers = self.task.predict(self.model, examples, batch_size=self.batch_size)
        results = [self.task.pipeline_result(a, e) for a, e in zip(answers, examples)]
        return results[0] if single else results


class GenerationPipeline:
    """text-generation over a pretrained (not fine-tuned) decoder run: prompt -> continuation."""

    def __init__(self, run_dir, *, device: str = "cpu", **defaults):
        self.model, self.tokenizer = load(run_dir, device=device)
        self.defaults = {"max_new_tokens": 64, "temperature": 0.0, **defaults}

    def __call__(self, prompts, **sampling):
        single = isinstance(prompts, str)
        rows = generate_text(self.model, self.tokenizer, [prompts] if single else list(prompts),
                             SamplingParams(**{**self.defaults, **sampling}))
        texts = [r[0] for r in rows]
        return texts[0] if single else texts


def back_translator(cfg: AugmentConfig):
    """texts -> texts through the two translation runs `augment.back_translation` (to a pivot language)
    and `augment.back_translation_return` (back): paraphrases for augmenting training data."""
    if not cfg.back_translation_return:
        raise DataError("augment.back_translation needs augment.back_translation_return too",
                        "pass a translate run for each direction (source->pivot and pivot->source)")
    there = pipeline("translation", model=cfg.back_translation)
    back = pipeline("translation", model=cfg.back_translation_return)
    return lambda texts: back(there(texts))


def pipeline(task: str, model: str | Path, *, batch_size: int = 32, device: str = "cpu"):
    """A callable that applies a fine-tuned run to plain Python inputs, like transformers' `pipeline`.

    sentiment-analysis: str or list[str] -> {"label", "score"} (or a list); ner: str (words split on
    spaces, characters for Chinese) or a token list -> {"tokens", "tags", "entities": [{"type", "start",
    "end", "text"}]}; question-answering:
    question=..., context=... -> {"answer", "score"}; translation/summarization: str -> str;
    text-generation: an instruction -> the reply (a run tuned with `chat`, or any pretrained GPT run).
    """
    name = task_for_pipeline(task)
    run_dir = Path(model)
    if name == "chat" and (run_dir / "config.json").is_file() \
            and traits_of(read_model_config(run_dir)).structure != "wrapper":  # a pretrained decoder, not a tuned run
        return GenerationPipeline(run_dir, device=device)
    net, task_obj = load_task_run(run_dir, device=device)
    if net.config.task != name:
        raise ConfigError(f"{run_dir} was fine-tuned for {net.config.task!r}, not {name!r}",
                          f"use the pipeline for {net.config.task!r} or a run tuned for {name!r}")
    return TaskPipeline(net, task_obj, batch_size)

"""Tiny random run directories for the explain tests: classifiers, a tagger and language models."""
from __future__ import annotations

from pathlib import Path

import torch

from lmforge.data.tokenizers import train_tokenizer
from lmforge.models.heads import TaskModel, TaskModelConfig
from lmforge.models.registry import build_model, save_model

CORPUS = ["the film was good and the acting was great", "a dull boring film with a bad plot",
          "Alice met Bob in Paris on a sunny day", "the quick brown fox jumps over the lazy dog"] * 3


def _save(model, tokenizer, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, directory)
    tokenizer.save(directory)
    return directory


def task_run(directory: Path, preset: str, *, task: str = "classify", labels=("neg", "pos"), block_size=64) -> Path:
    """A fine-tuned-looking run: a random `preset` backbone under a classify (sequence) or ner (token) head."""
    kind = "wordpiece" if preset.startswith("bert") else "bpe"
    tokenizer = train_tokenizer(kind, CORPUS, vocab_size=300)
    torch.manual_seed(0)
    backbone = build_model(preset, vocab_size=tokenizer.vocab_size, block_size=block_size)
    head = "sequence" if task == "classify" else "token"
    model = TaskModel(TaskModelConfig(task=task, head=head, backbone=backbone.config.to_dict(), labels=list(labels),
                                      classifier_dropout=0.0), backbone)
    torch.nn.init.normal_(model.head.weight, std=1.0)  # a random head with decided, text-dependent outputs
    return _save(model, tokenizer, directory)


def lm_run(directory: Path, preset: str = "debug", *, block_size: int = 64) -> Path:
    tokenizer = train_tokenizer("bpe", CORPUS, vocab_size=300)
    torch.manual_seed(0)
    overrides = {"init_std": 0.2} if preset in ("debug", "llama-debug") else {}
    model = build_model(preset, vocab_size=tokenizer.vocab_size, block_size=block_size, **overrides)
    return _save(model, tokenizer, directory)

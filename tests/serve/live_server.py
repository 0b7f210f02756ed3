"""Shared by the server tests: a tiny random GPT run directory and a real uvicorn server in a thread."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import torch
import uvicorn

from conftest import free_port
from lmforge.data.tokenizers import train_tokenizer
from lmforge.models.heads import TaskModel, TaskModelConfig
from lmforge.models.registry import build_model, save_model

CORPUS = ["The quick brown fox jumps over the lazy dog. " * 3, "User: hello there\nAssistant: hi, how are you?\n",
          "Pack my box with five dozen liquor jugs!"]


def make_gpt_run(directory: Path, **overrides) -> Path:
    """A run directory (config.json, model.safetensors, tokenizer.json) holding a random 2-layer GPT
    (`overrides` change its config, e.g. block_size)."""
    tok = train_tokenizer("char", CORPUS, vocab_size=0)
    torch.manual_seed(0)
    # A larger init than training uses, so greedy decoding of a random model gives varied tokens.
    model = build_model("debug", init_std=0.2, vocab_size=tok.vocab_size, **overrides)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, directory)
    tok.save(directory)
    return directory


def make_task_run(directory: Path, *, task: str = "classify", labels=("neg", "pos")) -> Path:
    """A fine-tuned-looking run: a random 2-layer BERT under a classify (sequence) or ner (token) head, with a
    random head whose outputs depend on the text."""
    tok = train_tokenizer("wordpiece", ["the film was good and the acting was great", "a dull boring film",
                                        "Alice met Bob in Paris"] * 3, vocab_size=300)
    torch.manual_seed(0)
    backbone = build_model("bert-debug", vocab_size=tok.vocab_size, block_size=64)
    model = TaskModel(TaskModelConfig(task=task, head="sequence" if task == "classify" else "token",
                                      backbone=backbone.config.to_dict(), labels=list(labels), classifier_dropout=0.0),
                      backbone)
    torch.nn.init.normal_(model.head.weight, std=1.0)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, directory)
    tok.save(directory)
    return directory


class LiveServer:
    """`app` served by uvicorn on 127.0.0.1 at a free port, from a background thread."""

    def __init__(self, app):
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    @property
    def state(self):
        return self.app.state.server

"""A minimal interactive chat on top of `generate`, for models trained on plain text.

The transcript uses a plain-text template that any causal LM can continue:

    <system text>

    User: hello
    Assistant: hi there
    User: ...
    Assistant:

The reply ends where the model starts the next user turn ("\\nUser:"). When the
transcript no longer fits the context, the oldest turns are dropped first.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from typing import Callable, TextIO

import torch.nn as nn

from lmforge.infer.generate import stream_text
from lmforge.infer.sampling import SamplingParams

USER, ASSISTANT = "User:", "Assistant:"
TURN_STOP = "\nUser:"
COMMANDS = "/reset clears the conversation, /exit or /quit (or Ctrl-D) leaves"


def format_transcript(turns: list[tuple[str, str]], user: str, system: str | None = None) -> str:
    """The prompt for the next reply: earlier (user, assistant) turns, then `user`, then "Assistant:"."""
    parts = [f"{system.strip()}\n\n"] if system else []
    for u, a in turns:
        parts.append(f"{USER} {u}\n{ASSISTANT} {a}\n")
    parts.append(f"{USER} {user}\n{ASSISTANT}")
    return "".join(parts)


def fit_prompt(tokenizer, turns: list[tuple[str, str]], user: str, system: str | None, budget: int) -> list[int]:
    """Token ids of the transcript, dropping the oldest turns (and then the system text) to fit `budget`.

    If the latest message alone is still too long, only its last `budget` tokens are kept.
    """
    kept = list(turns)
    while True:
        ids = tokenizer.encode(format_transcript(kept, user, system))
        if len(ids) <= budget:
            return ids
        if kept:
            kept.pop(0)
        elif system:
            system = None
        else:
            return ids[-budget:]


def chat_loop(model: nn.Module, tokenizer, params: SamplingParams, *, input_fn: Callable[[str], str] = input,
              output: TextIO = sys.stdout, system: str | None = None) -> list[tuple[str, str]]:
    """Read user messages with `input_fn`, stream replies to `output`; return the conversation.

    Ends on EOF (Ctrl-D), Ctrl-C at the prompt, "/exit" or "/quit"; "/reset" forgets the conversation.
    """
    params = replace(params, num_samples=1, stop=list(dict.fromkeys([*params.stop, TURN_STOP])))
    block = model.config.block_size
    # Leave room for a reply: the requested length, but never more than half the context.
    budget = block - min(params.max_new_tokens, block // 2)
    turns: list[tuple[str, str]] = []
    output.write(f"({COMMANDS})\n")
    output.flush()
    while True:
        try:
            message = input_fn(f"{USER} ")
        except (EOFError, KeyboardInterrupt):
            output.write("\n")
            break
        message = message.strip()
        if not message:
            continue
        if message in ("/exit", "/quit"):
            break
        if message == "/reset":
            turns.clear()
            output.write("(conversation cleared)\n")
            output.flush()
            continue
        ids = fit_prompt(tokenizer, turns, message, system, budget)
        output.write(f"{ASSISTANT} ")
        output.flush()
        # The template puts a space after "Assistant:"; the model usually produces it itself.
        reply = stream_text(model, tokenizer, ids, params, output=_SkipLeadingSpace(output))
        output.write("\n")
        output.flush()
        turns.append((message, reply.strip()))
    return turns


class _SkipLeadingSpace:
    """Wraps an output stream and drops whitespace written before the first visible character."""

    def __init__(self, output: TextIO):
        self.output = output
        self.started = False

    def write(self, text: str) -> int:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        if text:
            self.output.write(text)
        return len(text)

    def flush(self) -> None:
        self.output.flush()

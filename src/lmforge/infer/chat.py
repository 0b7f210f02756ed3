"""A minimal interactive chat on top of `generate`, for models trained on plain text.

The transcript uses a plain-text template that any causal LM can continue:

    <system text>

    User: hello
    Assistant: hi there
    User: ...
    Assistant:

The reply ends where the model starts the next user turn ("\\nUser:") or at end-of-text. When
the transcript no longer fits the context, the oldest turns are dropped first.

Instruction tuning (`lmforge finetune --task chat`) trains on single exchanges laid out by
`format_exchange`, i.e. exactly the prompt this loop builds followed by the reply and
end-of-text, so a tuned model answers here as it was taught.
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


def user_message(instruction: str, input: str = "") -> str:
    """One user turn from an instruction and its optional input (Alpaca-style data): the two on separate lines."""
    instruction, input = instruction.strip(), (input or "").strip()
    return f"{instruction}\n{input}" if input and instruction else (instruction or input)


def format_exchange(user: str, reply: str, system: str | None = None) -> tuple[str, str]:
    """(prompt, reply text) of a single exchange: the prompt for `user` as `format_transcript` builds it, and
    the reply as it follows "Assistant:" in a transcript (leading space, surrounding whitespace stripped)."""
    return format_transcript([], user, system), f" {reply.strip()}"


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


def prompt_budget(block_size: int, max_new_tokens: int) -> int:
    """Tokens a prompt may take: the context less room for the reply (never more than half the context)."""
    return block_size - min(max_new_tokens, block_size // 2)


def chat_loop(model: nn.Module, tokenizer, params: SamplingParams, *, input_fn: Callable[[str], str] = input,
              output: TextIO = sys.stdout, system: str | None = None) -> list[tuple[str, str]]:
    """Read user messages with `input_fn`, stream replies to `output`; return the conversation.

    Ends on EOF (Ctrl-D), Ctrl-C at the prompt, "/exit" or "/quit"; "/reset" forgets the conversation.
    """
    params = replace(params, num_samples=1, stop=list(dict.fromkeys([*params.stop, TURN_STOP])))
    budget = prompt_budget(model.config.block_size, params.max_new_tokens)
    turns: list[tuple[str, str]] = []
    replies = 0
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
        # The seed fixes the whole session, not each reply: reply i draws with seed + i, so replies
        # differ from each other and the session is still reproducible.
        turn = replace(params, seed=None if params.seed is None else params.seed + replies)
        replies += 1
        # The template puts a space after "Assistant:"; the model usually produces it itself.
        reply = stream_text(model, tokenizer, ids, turn, output=_SkipLeadingSpace(output))
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

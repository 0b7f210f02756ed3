"""Scoring prompts for `echo` + `logprobs`: every prompt token's log-probability given the tokens before it.

The scoring runs in the engine thread between two generation steps (`EngineLoop.call`), batched over the
request's prompts by `lmforge.infer.scoring.score_sequences`, so that one thread alone ever runs the
model. With `max_tokens` 0 nothing is generated: the answer is the scored prompt itself, which is how
evaluation harnesses ask for a continuation's log-likelihood.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from functools import partial

from lmforge.errors import LmforgeError
from lmforge.infer.scoring import TokenLogprob, score_sequences
from lmforge.serve.engine_loop import EngineStopped
from lmforge.serve.errors import APIError, timeout_error
from lmforge.serve.logprobs import completion_logprobs
from lmforge.serve.state import ServerState


@dataclass
class Echo:
    """A prompt put before its completions: its text, token ids and (with `logprobs`) token scores."""

    text: str
    ids: list[int]
    scores: list[TokenLogprob | None] | None


def check_logprobs(state: ServerState, k: int | None, param: str) -> None:
    """Refuse more alternatives per token than the server's limit."""
    if k is not None and k > state.limits.max_logprobs:
        raise APIError(400, f"{param} is {k} but this server returns at most {state.limits.max_logprobs} "
                            "alternatives per token", param=param, code="invalid_value")


def check_echo_lengths(state: ServerState, prompts: list[list[int]], max_tokens: int) -> None:
    """An echoed prompt is read whole: it must fit the context, with room for `max_tokens` more."""
    for ids in prompts:
        if len(ids) + max_tokens > state.context_len:
            raise APIError(400, f"the echoed prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                                f"model's context length of {state.context_len} tokens", param="prompt",
                           code="context_length_exceeded")


async def score_prompts(state: ServerState, prompts: list[list[int]], top_k: int) -> list[list[TokenLogprob | None]]:
    """The scores of every token of each prompt (None for a prompt's first token), computed in the engine thread."""
    remaining = state.deadline() - time.monotonic()
    work = partial(score_sequences, state.engine.model, prompts, top_k=top_k,
                   max_batch_tokens=max(state.engine.scheduler.max_num_batched_tokens, state.context_len))
    try:
        done = await asyncio.wait_for(state.loop.call(work), timeout=remaining)
    except asyncio.TimeoutError:
        raise timeout_error(state.limits.request_timeout) from None
    except EngineStopped as e:
        raise APIError(503, str(e), "server_error", code="engine_unavailable") from None
    except LmforgeError as e:
        raise APIError(400, str(e), param="prompt", code="invalid_prompt") from None
    return [s.scores for s in done]


async def echoes(state: ServerState, tokenizer, texts: list[str | list[int]], prompts: list[list[int]],
                 logprobs: int | None) -> list[Echo]:
    """The echo of each prompt: the text as given (token ids decoded), with scores when `logprobs` is set."""
    scores = await score_prompts(state, prompts, logprobs) if logprobs is not None else [None] * len(prompts)
    return [Echo(t if isinstance(t, str) else tokenizer.decode(ids), ids, s)
            for t, ids, s in zip(texts, prompts, scores)]


def scored_prompts_body(state: ServerState, tokenizer, echoed: list[Echo], n: int) -> dict:
    """The completions answer for `max_tokens` 0: each prompt echoed `n` times, scored, nothing generated."""
    choices = []
    for e in echoed:
        logprobs = completion_logprobs(tokenizer, e.ids, e.scores) if e.scores is not None else None
        for _ in range(n):
            choices.append({"index": len(choices), "text": e.text, "logprobs": logprobs, "finish_reason": "length"})
    prompt_tokens = sum(len(e.ids) for e in echoed)
    return {"id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()),
            "model": state.model_name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0, "total_tokens": prompt_tokens}}

"""`POST /v1/completions`, and the checks every generation request shares: the model asked for,
the prompt's tokens and the sampling parameters within the server's limits.

`echo` and `logprobs` follow OpenAI's legacy completions: the prompt is put before each completion and,
with `logprobs` k, every token (the echoed prompt's too) is scored with its k most likely alternatives;
`max_tokens` 0 with `echo` scores the prompt without generating. Scores are not streamed: a streamed
request asking for them gets a 400."""
from __future__ import annotations

from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from lmforge.errors import ConfigError, LmforgeError
from lmforge.infer.generate import encode_prompt
from lmforge.infer.sampling import SamplingParams
from lmforge.serve.errors import APIError
from lmforge.serve.generation import Scoring, run_generation
from lmforge.serve.prompt_scores import check_echo_lengths, check_logprobs, echoes, scored_prompts_body
from lmforge.serve.schemas import MAX_CHOICES, CompletionRequest
from lmforge.serve.state import ServerState

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions


def check_model(state: ServerState, model: str) -> None:
    """Refuse a generation request for any model but the generating one."""
    if model == state.model_name:
        return
    if model in state.tasks:
        raise APIError(404, f"model {model!r} is a {model} model, which does not generate text; "
                            f"use POST /v1/{model}", param="model", code="model_not_found")
    raise APIError(404, f"the model {model!r} does not exist; this server serves {state.model_name!r}",
                   param="model", code="model_not_found")


def prompt_encoder(tokenizer) -> Callable[[str], list[int]]:
    """Text -> token ids, a text the tokenizer refuses being a 400."""

    def encode(text: str) -> list[int]:
        try:
            return encode_prompt(tokenizer, text)
        except LmforgeError as e:
            raise APIError(400, str(e), param="prompt", code="invalid_prompt") from None

    return encode


def sampling_params(state: ServerState, body, max_tokens: int, prompt_ids: list[list[int]], stop: list[str],
                    param: str) -> list[SamplingParams]:
    """One SamplingParams per prompt and sample, after checking that the prompts and `max_tokens` fit."""
    _check_lengths(state, max_tokens, prompt_ids, param)
    out = []
    for _ in prompt_ids:
        for j in range(body.n):
            seed = body.seed + j if body.seed is not None else None
            try:
                p = SamplingParams(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                                   repetition_penalty=body.repetition_penalty, max_new_tokens=max_tokens,
                                   stop=stop, seed=seed, no_repeat_ngram_size=body.no_repeat_ngram_size,
                                   min_new_tokens=body.min_tokens)
            except ConfigError as e:
                raise APIError(400, str(e), code="invalid_value") from None
            out.append(p)
    return out


def _check_lengths(state: ServerState, max_tokens: int, prompt_ids: list[list[int]], param: str) -> None:
    limits = state.limits
    if max_tokens > limits.max_tokens_limit:
        raise APIError(400, f"max_tokens is {max_tokens} but this server allows at most {limits.max_tokens_limit}",
                       param="max_tokens", code="invalid_value")
    for ids in prompt_ids:
        if len(ids) > limits.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(ids)} tokens but this server accepts at most "
                                f"{limits.max_prompt_tokens}", param=param, code="context_length_exceeded")
        if len(ids) + max_tokens > state.context_len:
            raise APIError(400, f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                                f"model's context length of {state.context_len} tokens; lower max_tokens to at most "
                                f"{state.context_len - len(ids)}", param="max_tokens", code="context_length_exceeded")


def add_completion_routes(app: FastAPI, state: ServerState, tokenizer) -> None:
    vocab = state.engine.vocab_size
    encode = prompt_encoder(tokenizer)

    def token_ids(prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return encode(prompt)
        if any(t >= vocab for t in prompt):
            raise APIError(400, f"prompt token ids must be below the vocabulary size {vocab}",
                           param="prompt", code="invalid_prompt")
        return list(prompt)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_model(state, body.model)
        texts = body.prompts()
        prompts = [token_ids(p) for p in texts]
        if len(prompts) * body.n > MAX_CHOICES:
            raise APIError(400, f"a request may ask for at most {MAX_CHOICES} completions (prompts x n)", param="n")
        max_tokens = body.max_tokens if body.max_tokens is not None else DEFAULT_MAX_TOKENS
        _check_scoring(state, body, prompts, max_tokens)
        if max_tokens == 0:
            return await _score_only(state, tokenizer, body, texts, prompts)
        params = sampling_params(state, body, max_tokens, prompts, body.stop_list(), "prompt")
        prompts = [p for p in prompts for _ in range(body.n)]
        scoring = Scoring(tokenizer, body.logprobs, texts if body.echo else None)
        return await run_generation(state, request, "completion", prompts, params, body, strip_leading=False,
                                    scoring=scoring)


def _check_scoring(state: ServerState, body: CompletionRequest, prompts: list[list[int]], max_tokens: int) -> None:
    check_logprobs(state, body.logprobs, "logprobs")
    if max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens 0 generates nothing; it is only useful with echo (scoring the prompt)",
                       param="max_tokens", code="invalid_value")
    if body.stream and (body.echo or body.logprobs is not None):
        raise APIError(400, "echo and logprobs are not supported with stream; send the request without stream",
                       param="stream", code="invalid_value")
    if body.echo:
        check_echo_lengths(state, prompts, max_tokens)


async def _score_only(state: ServerState, tokenizer, body: CompletionRequest, texts, prompts) -> JSONResponse:
    state.acquire()
    try:
        echoed = await echoes(state, tokenizer, texts, prompts, body.logprobs)
        return JSONResponse(scored_prompts_body(state, tokenizer, echoed, body.n))
    finally:
        state.release()

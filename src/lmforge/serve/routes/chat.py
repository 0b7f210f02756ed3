"""`POST /v1/chat/completions`: the messages become the chat template's transcript, and the reply
stops at the end of the assistant's turn. With `logprobs` the reply's tokens come back scored (with
`top_logprobs` alternatives each), in chat's `logprobs` shape; scores are not streamed."""
from __future__ import annotations

from fastapi import FastAPI, Request

from lmforge.infer.chat import TURN_STOP, format_transcript
from lmforge.serve.errors import APIError
from lmforge.serve.generation import Scoring, run_generation
from lmforge.serve.prompt_scores import check_logprobs
from lmforge.serve.routes.completions import check_model, prompt_encoder, sampling_params
from lmforge.serve.schemas import ChatCompletionRequest, ChatMessage
from lmforge.serve.state import ServerState

SYSTEM_ROLES = ("system", "developer")


def transcript(messages: list[ChatMessage]) -> str:
    """The prompt for `messages`: system text, earlier (user, assistant) turns, then the last user text."""
    system = [m.text() for m in messages if m.role in SYSTEM_ROLES]
    turns: list[tuple[str, str]] = []
    user: str | None = None
    for m in messages:
        if m.role == "user":
            user = m.text() if user is None else f"{user}\n{m.text()}"
        elif m.role == "assistant":
            turns.append((user or "", m.text().strip()))
            user = None
    if user is None:
        raise APIError(400, "the last non-system message must be from the user", param="messages",
                       code="invalid_value")
    return format_transcript(turns, user.strip(), "\n\n".join(system) or None)


def add_chat_routes(app: FastAPI, state: ServerState, tokenizer) -> None:
    encode = prompt_encoder(tokenizer)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(state, body.model)
        ids = encode(transcript(body.messages))
        limit = body.token_limit()
        # Without a limit the reply may fill the context, up to the server's max_tokens limit.
        max_tokens = limit if limit is not None else max(1, min(state.limits.max_tokens_limit,
                                                               state.context_len - len(ids)))
        stop = list(dict.fromkeys([*body.stop_list(), TURN_STOP]))
        params = sampling_params(state, body, max_tokens, [ids], stop, "messages")
        return await run_generation(state, request, "chat", [ids] * body.n, params, body, strip_leading=True,
                                    scoring=_scoring(state, tokenizer, body))


def _scoring(state: ServerState, tokenizer, body: ChatCompletionRequest) -> Scoring | None:
    check_logprobs(state, body.top_logprobs, "top_logprobs")
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
    if not body.logprobs:
        return None
    if body.stream:
        raise APIError(400, "logprobs are not supported with stream; send the request without stream",
                       param="stream", code="invalid_value")
    return Scoring(tokenizer, body.top_logprobs or 0)

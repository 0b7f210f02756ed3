"""Request bodies of the HTTP API, with the bounds every field must respect.

The generation requests follow OpenAI's completions and chat completions bodies; `top_k`,
`repetition_penalty`, `no_repeat_ngram_size` and `min_tokens` (as vLLM names it) are accepted as
extensions. Fields OpenAI defines but this server does not
implement are accepted only at their neutral value, so a client relying on them gets a clear 400
instead of a silently different answer. Unknown fields are ignored, as clients send extras.
Limits that depend on the served model (prompt length, `max_tokens`, `logprobs`) are checked by the
server.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_CHOICES = 16          # prompts x n per request
MAX_STOP = 16             # OpenAI allows 4; evaluation harnesses send a task's stop strings plus end-of-text
MAX_STOP_CHARS = 256
MAX_MESSAGES = 256
MAX_TASK_INPUTS = 64

Text = Annotated[str, Field(max_length=1_000_000)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
StopStrings = Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]],
                        Field(max_length=MAX_STOP)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    """Fields shared by completions and chat completions."""

    model: str = Field(min_length=1, max_length=256)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    no_repeat_ngram_size: int = Field(0, ge=0, le=64)
    min_tokens: int = Field(0, ge=0)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)] | StopStrings | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(None, max_length=256)

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float) -> float:
        if v != 0.0:
            raise ValueError("is not supported (only 0); use repetition_penalty instead")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v):
        if v:
            raise ValueError("is not supported")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_Sampling):
    """POST /v1/completions. `prompt` is a text, a list of texts, a list of token ids, or a list of such lists.

    `echo` puts the prompt before each completion; `logprobs` k scores every token (the prompt's too
    with `echo`) with its k most likely alternatives; `max_tokens` 0 with `echo` only scores the prompt."""

    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_CHOICES)] | TokenIds | \
        Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_CHOICES)]
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0)
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("suffix")
    @classmethod
    def _unsupported(cls, v):
        if v:
            raise ValueError("is not supported")
        return v

    @field_validator("best_of")
    @classmethod
    def _one_best(cls, v: int | None) -> int | None:
        if v not in (None, 1):
            raise ValueError("is not supported (only 1)")
        return v

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class TextPart(_Body):
    type: Literal["text"]
    text: Text


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | Annotated[list[TextPart], Field(max_length=64)] | None = None
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0)

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


TaskInput = Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_TASK_INPUTS)]


class TaskRequest(_Body):
    """POST /v1/classify, /v1/ner, /v1/translate, /v1/summarize: one text or a list of texts."""

    input: TaskInput
    model: str | None = Field(None, max_length=256)


class QARequest(_Body):
    """POST /v1/qa: a question and the context to find its answer in (or lists of equal length)."""

    question: TaskInput
    context: TaskInput
    model: str | None = Field(None, max_length=256)


class TokenizeRequest(_Body):
    """POST /tokenize: a `prompt`, or chat `messages` (encoded as the chat endpoint encodes them). Special tokens
    are never added, so `add_special_tokens` is accepted at false only."""

    model: str | None = Field(None, max_length=256)
    prompt: Text | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)] | None = None
    add_special_tokens: bool = False


class DetokenizeRequest(_Body):
    """POST /detokenize: token ids to text."""

    model: str | None = Field(None, max_length=256)
    tokens: TokenIds

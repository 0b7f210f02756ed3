"""The served model's tokenizer over HTTP, in the shape vLLM gives it (which lm-evaluation-harness's `remote`
tokenizer reads): `POST /tokenize` (a text, or chat messages as the chat endpoint would format them, to
token ids), `POST /detokenize` (token ids to text) and `GET /tokenizer_info` (the special tokens and the
context length). Like every `/v1/` route they need an API key when the server has keys."""
from __future__ import annotations

from fastapi import FastAPI

from lmforge.serve.errors import APIError
from lmforge.serve.routes.chat import transcript
from lmforge.serve.routes.completions import check_model, prompt_encoder
from lmforge.serve.schemas import DetokenizeRequest, TokenizeRequest
from lmforge.serve.state import ServerState

TOKENIZER_ROUTES = ("/tokenize", "/detokenize", "/tokenizer_info")
START_TOKENS = ("<s>", "<|begin_of_text|>")  # spellings of a start-of-text token; GPT-2's tokenizers have none


def tokenizer_info(state: ServerState, tokenizer) -> dict:
    """The special tokens and limits a client needs to tokenize for this model itself."""
    eos = tokenizer.id_to_token(tokenizer.eos_id)
    start = next((t for t in START_TOKENS if tokenizer.token_to_id(t) is not None), None)
    return {"tokenizer_class": f"lmforge.{tokenizer.kind}", "vocab_size": tokenizer.vocab_size,
            "eos_token": eos, "eos_token_id": tokenizer.eos_id, "bos_token": start,
            "bos_token_id": tokenizer.token_to_id(start) if start else None,
            "pad_token": tokenizer.id_to_token(tokenizer.pad_id), "pad_token_id": tokenizer.pad_id,
            "model_max_length": state.context_len, "max_model_len": state.context_len, "chat_template": None}


def add_tokenizer_routes(app: FastAPI, state: ServerState, tokenizer) -> None:
    encode = prompt_encoder(tokenizer)
    vocab = state.engine.vocab_size

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        if body.model is not None:
            check_model(state, body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "pass either prompt or messages", param="prompt", code="invalid_value")
        if body.add_special_tokens:
            raise APIError(400, "add_special_tokens is not supported (this model's texts take no added tokens)",
                           param="add_special_tokens", code="invalid_value")
        ids = tokenizer.encode(body.prompt) if body.prompt is not None else encode(transcript(body.messages))
        return {"count": len(ids), "max_model_len": state.context_len, "tokens": ids}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        if body.model is not None:
            check_model(state, body.model)
        if any(t >= vocab for t in body.tokens):
            raise APIError(400, f"token ids must be below the vocabulary size {vocab}", param="tokens",
                           code="invalid_value")
        return {"prompt": tokenizer.decode(body.tokens)}

    info = tokenizer_info(state, tokenizer)

    @app.get("/tokenizer_info")
    async def get_tokenizer_info():
        return info

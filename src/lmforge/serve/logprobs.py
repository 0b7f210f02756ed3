"""Token scores in OpenAI's two response shapes.

Completions (the legacy shape): `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`, one entry per
token; the first token of an echoed prompt has no score (`null`), and each `top_logprobs` entry maps the
most likely tokens' texts to their log-probabilities, the chosen token always among them (so up to k + 1
entries, as OpenAI documents). `text_offset` is where each token's text starts in the choice's `text`.
Chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}],
"refusal": null}`.
"""
from __future__ import annotations

from lmforge.infer.scoring import TokenLogprob


def token_text(tokenizer, token_id: int) -> str:
    """A token's own text; a special token (which decoding skips) is shown by its name."""
    return tokenizer.decode([token_id]) or (tokenizer.id_to_token(token_id) or "")


def text_offsets(tokenizer, token_ids: list[int]) -> list[int]:
    """Where each token's text starts in the decoded text of `token_ids`: the length of the text before it."""
    return [len(tokenizer.decode(token_ids[:i])) if i else 0 for i in range(len(token_ids))]


def _top_dict(tokenizer, score: TokenLogprob) -> dict[str, float]:
    top: dict[str, float] = {}
    for token_id, logprob in [*score.top, (score.token_id, score.logprob)]:
        text = token_text(tokenizer, token_id)
        top[text] = max(logprob, top.get(text, float("-inf")))  # two ids may share one text
    return top


def completion_logprobs(tokenizer, token_ids: list[int], scores: list[TokenLogprob | None]) -> dict:
    """The legacy completions `logprobs` object of one choice whose text decodes from `token_ids`."""
    return {"tokens": [token_text(tokenizer, t) for t in token_ids],
            "token_logprobs": [s.logprob if s is not None else None for s in scores],
            "top_logprobs": [_top_dict(tokenizer, s) if s is not None else None for s in scores],
            "text_offset": text_offsets(tokenizer, token_ids)}


def _chat_entry(tokenizer, token_id: int, logprob: float) -> dict:
    text = token_text(tokenizer, token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokenizer, scores: list[TokenLogprob]) -> dict:
    """The chat completions `logprobs` object of one choice's reply."""
    return {"content": [{**_chat_entry(tokenizer, s.token_id, s.logprob),
                         "top_logprobs": [_chat_entry(tokenizer, t, lp) for t, lp in s.top]} for s in scores],
            "refusal": None}

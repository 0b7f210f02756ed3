"""The guard in front of every request: API keys on `/v1/` routes and the tokenizer routes, the request
body size limit, and the response counts `/metrics` reports. `/`, `/health` and `/metrics` stay open so probes and
scrapers need no key. (The limit on requests in progress is `ServerState.acquire`, taken by the
handlers that do work, so a request refused as invalid never holds a place.)"""
from __future__ import annotations

import hmac
from typing import Sequence

from lmforge.serve.errors import APIError
from lmforge.serve.routes.tokenize import TOKENIZER_ROUTES
from lmforge.serve.state import ServerState
from lmforge.tasks import routed_tasks

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/",
             *(f"/v1/{t}" for t in routed_tasks()), *TOKENIZER_ROUTES)
BODYLESS_METHODS = ("GET", "HEAD", "OPTIONS", "DELETE")


def authorized(api_keys: Sequence[bytes], header: str | None) -> bool:
    """Whether an Authorization header carries one of `api_keys` (any header does when there are none)."""
    if not api_keys:
        return True
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    token_b = token.strip().encode()
    # Compare against every key so the time taken does not tell which one came close.
    ok = False
    for key in api_keys:
        ok |= hmac.compare_digest(token_b, key)
    return ok


def endpoint_label(path: str) -> str:
    """The endpoint a response is counted under (one label for every unknown path)."""
    if path in ENDPOINTS:
        return path
    return "/v1/models" if path.startswith("/v1/models/") else "other"


class Guard:
    """ASGI middleware: API keys on /v1/ routes, the request body size limit, and response counts."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        status_box = [500]

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, counting_send, path)
        finally:
            self.state.metrics.count_response(endpoint_label(path), status_box[0])

    async def _handle(self, scope, receive, send, path: str):
        if path.startswith("/v1/") or path in TOKENIZER_ROUTES:
            refusal = self._refusal(scope)
            if refusal is not None:
                return await refusal.response()(scope, receive, send)
            if scope.get("method") == "POST":
                scope = _json_content_type(scope)
        limit = self.state.limits.max_body_bytes
        length = dict(scope.get("headers", [])).get(b"content-length")
        too_large = APIError(413, f"the request body exceeds the server's limit of {limit} bytes",
                             code="request_too_large")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await APIError(400, "invalid Content-Length header").response()(scope, receive, send)
            if n > limit:
                return await too_large.response()(scope, receive, send)
            return await self.app(scope, receive, send)
        if scope.get("method") in BODYLESS_METHODS:
            return await self.app(scope, receive, send)
        return await self._read_limited(scope, receive, send, limit, too_large)

    def _refusal(self, scope) -> APIError | None:
        """The 401 for a /v1/ request without a valid API key; None when it may pass."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if authorized(self.state.api_keys, headers.get("authorization")):
            return None
        msg = ("no API key given; send the header Authorization: Bearer <key>" if "authorization" not in headers
               else "invalid API key")
        return APIError(401, msg, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def _read_limited(self, scope, receive, send, limit: int, too_large: APIError):
        """A body without a length (chunked): read it up to the limit, then replay it to the app."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                return await too_large.response()(scope, receive, send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _json_content_type(scope):
    """Every /v1/ body is JSON: one sent without a content type, or as curl's default form type, is read as JSON."""
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-type"]
    given = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-type"), b"")
    if given and not given.startswith(b"application/x-www-form-urlencoded"):
        return scope
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}

"""Server-sent events: a streamed completion is one `data: {json}` event per piece of text, then
`data: [DONE]`. An error after the status line has gone out becomes the stream's last event."""
from __future__ import annotations

import json
from typing import Any, Callable

from fastapi.responses import StreamingResponse

from lmforge.serve.errors import APIError, error_body

DONE = "data: [DONE]\n\n"


class SSEResponse(StreamingResponse):
    """A server-sent event stream whose `cleanup` runs however the response ends (finished,
    client gone, or never started)."""

    def __init__(self, content, cleanup: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._cleanup = cleanup

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cleanup()


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def sse_error(error: APIError) -> str:
    """The event reporting `error` once the status line has gone out."""
    return sse(error_body(error.message, error.type, error.param, error.code))

"""Every error the server answers is OpenAI's error JSON `{"error": {"message", "type", "param", "code"}}`
with a 4xx/5xx status: raised `APIError`s, invalid request bodies, unknown routes and unexpected failures."""
from __future__ import annotations

import logging
from typing import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("lmforge.serve")


class APIError(Exception):
    """An error answered as `{"error": {...}}` with HTTP status `status`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", *, param: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), self.status,
                            headers=self.headers)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def timeout_error(seconds: float | None) -> APIError:
    return APIError(504, f"the request took longer than the server's limit of {seconds:g} s", "timeout_error",
                    code="timeout")


def validation_error(exc: RequestValidationError) -> APIError:
    """The first problem of an invalid request body, worded for the client."""
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request body")
    first = errors[0]
    if first.get("type") not in ("json_invalid", "missing"):
        # Of a union's alternatives, the one whose error lies deepest came closest to fitting.
        head = first.get("loc", ())[:2]
        first = max((e for e in errors if e.get("loc", ())[:2] == head), key=lambda e: len(e.get("loc", ())))
    kind = first.get("type", "")
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error") or first.get("msg", "")
        return APIError(400, f"the request body is not valid JSON: {detail}", code="invalid_json")
    if not loc and kind in ("missing", "model_attributes_type", "dict_type"):
        return APIError(400, "the request body must be a JSON object", code="invalid_body")
    # A union reports one error per alternative; the field path without the alternatives' names reads best.
    fields = [p for p in loc if not _union_tag(p)]
    param = ".".join(fields) or None
    msg = first.get("msg", "invalid value")
    if kind == "missing":
        return APIError(400, f"missing required parameter: {param}", param=param, code="missing_parameter")
    if kind.startswith("value_error"):
        msg = msg.removeprefix("Value error, ")
        return APIError(400, f"{param} {msg}", param=param, code="invalid_value")
    return APIError(400, f"invalid value for {param}: {msg}", param=param, code="invalid_value")


def _union_tag(part: str) -> bool:
    """Whether a location part names a union alternative (`str`, `list[int]`...) rather than a field."""
    return (part in ("str", "int", "float", "bool", "none") or part[:1].isupper()
            or part.startswith(("list[", "dict[", "function-", "constrained-", "json-or-python")))


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure of `app` in the error JSON."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return APIError(404, f"no route {request.method} {request.url.path}", code="not_found").response()
        if exc.status_code == 405:
            return APIError(405, f"{request.method} is not allowed on {request.url.path}",
                            code="method_not_allowed").response()
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return APIError(500, "internal server error", "server_error", code="internal_error").response()

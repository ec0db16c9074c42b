"""One place that maps errors to HTTP: JSON `{"error": {"code", "message"}}`, never a stack trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from app.errors import (
    ConfigurationError,
    IdempotencyKeyReused,
    ImportConflict,
    InvalidCursor,
    InvalidInput,
    LeaseLost,
    NonFiniteNumber,
    Overloaded,
    RateLimited,
    SessionError,
    StoreUnavailable,
    UnaddressableDeviceId,
)

logger = logging.getLogger(__name__)

STATUS = [
    (IdempotencyKeyReused, 422),
    (InvalidCursor, 422),
    (RateLimited, 429),
    (ImportConflict, 409),
    (InvalidInput, 400),
    (StoreUnavailable, 503),
    (Overloaded, 503),
    (LeaseLost, 409),
    (ConfigurationError, 500),
    (SessionError, 500),
]

# Raised inside body validation, these keep their own code on the 422 instead of
# "validation_error", so a client can tell them apart without parsing the message.
TYPED_IN_BODIES = (NonFiniteNumber, UnaddressableDeviceId)


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """The shape of every error response."""

    error: ErrorDetail


class ApiError(Exception):
    """An HTTP error with a stable code, raised by routes and dependencies."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.code, err.message, err.headers)

    @app.exception_handler(SessionError)
    async def _session_error(request: Request, err: SessionError) -> JSONResponse:
        status = next(code for kind, code in STATUS if isinstance(err, kind))
        if isinstance(err, Overloaded):  # a bound doing its job, not a fault
            return error_response(503, err.code, str(err), {"Retry-After": str(err.retry_after)})
        if status >= 500:
            logger.error("%s on %s %s: %s", err.code, request.method, request.url.path, err)
        message = str(err) if status < 500 or isinstance(err, ConfigurationError) else _public(err)
        headers = {"Retry-After": "5"} if status == 503 else None
        if isinstance(err, RateLimited):
            headers = {"Retry-After": str(err.retry_after)}
        return error_response(status, err.code, message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
        cause = (first.get("ctx") or {}).get("error")
        return error_response(422, cause.code if isinstance(cause, TYPED_IN_BODIES) else "validation_error", message)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            err.status_code, "http_error"
        )
        return error_response(err.status_code, code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error")


def _public(err: SessionError) -> str:
    if isinstance(err, StoreUnavailable):
        return "the session store is unavailable, try again shortly"
    return "internal error"

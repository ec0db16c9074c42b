"""One place that maps errors to HTTP: JSON `{"error": {"code", "message"}}`, never a stack trace.

Also the answer to a request the server cancels at shutdown (`AnswerInterrupted`): the same
format, 503 `interrupted`, instead of the ASGI server's plain-text 500.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import (
    ConfigurationError,
    IdempotencyKeyReused,
    ImportConflict,
    Interrupted,
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
    (Interrupted, 503),
    (LeaseLost, 409),
    (ConfigurationError, 500),
    (SessionError, 500),
]

# Raised inside body validation, these keep their own code on the 422 instead of
# "validation_error", so a client can tell them apart without parsing the message.
TYPED_IN_BODIES = (NonFiniteNumber, UnaddressableDeviceId)

# scope["state"] key: the id of the message a request stored (app/api/routes/chat.py), so that
# the answer to a request interrupted after that can say the message is kept.
STORED = "stored_message_id"
SEND_SECONDS = 5.0  # at most this long to send an interrupted request its answer


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
        return session_error_response(err, request.method, request.url.path)

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


def session_error_response(err: SessionError, method: str, path: str) -> JSONResponse:
    """The response for err (its status from STATUS); a 5xx fault is logged with method and path."""
    status = next(code for kind, code in STATUS if isinstance(err, kind))
    if isinstance(err, (Overloaded, Interrupted)):  # a bound doing its job, or a stop: not a fault
        return error_response(503, err.code, str(err), {"Retry-After": str(err.retry_after)})
    if status >= 500:
        logger.error("%s on %s %s: %s", err.code, method, path, err)
    message = str(err) if status < 500 or isinstance(err, ConfigurationError) else _public(err)
    headers = {"Retry-After": "5"} if status == 503 else None
    if isinstance(err, RateLimited):
        headers = {"Retry-After": str(err.retry_after)}
    return error_response(status, err.code, message, headers)


def mark_stored(scope: Scope, message_id: int | None) -> None:
    """Note in the request's state that its message is stored (see STORED); None: nothing stored."""
    if message_id is not None:
        scope.setdefault("state", {})[STORED] = message_id


def interrupted(scope: Scope) -> Interrupted:
    """What an interrupted request is told: whether its message is kept, and how to get the reply."""
    stored: Any = scope.get("state", {}).get(STORED)
    if stored is not None:
        return Interrupted(
            f"the server stopped before message {stored} was answered: the message is kept and will be answered; "
            "its reply appears in GET /api/chat/messages, or retry with the same Idempotency-Key to get it"
        )
    return Interrupted("the server stopped before this request finished: retry it (the same Idempotency-Key, if any)")


class AnswerInterrupted:
    """Pure ASGI middleware: a request cancelled by the server before its response started gets 503 `interrupted`.

    At shutdown uvicorn waits its graceful-shutdown timeout (SHUTDOWN_GRACE_SECONDS under
    `python -m app serve`) for the requests in flight, then cancels them; the pipeline gives
    the turn's lease back, and the next holder answers the message. Without this the client
    got uvicorn's plain-text 500. The answer is sent in a shielded scope and the cancellation
    is raised again, so that the task still ends cancelled. A response already started (a
    stream) cannot change its status: the server closes the connection as before.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except anyio.get_cancelled_exc_class():
            if not started:
                response = session_error_response(interrupted(scope), scope["method"], scope["path"])
                # Shielded from the cancellation being handled, but bounded: a send that cannot finish
                # must not hold the shutdown. A client already gone is no reason to lose the cancellation.
                with anyio.move_on_after(SEND_SECONDS, shield=True), contextlib.suppress(Exception):
                    await response(scope, receive, send)
            raise


def _public(err: SessionError) -> str:
    if isinstance(err, StoreUnavailable):
        return "the session store is unavailable, try again shortly"
    return "internal error"

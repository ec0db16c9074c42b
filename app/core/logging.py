"""Structured logs: JSON in serverless, readable locally; a request id on every line; no secrets,
message bodies or raw device ids (a keyed hash stands for them)."""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
import uuid

from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access = logging.getLogger("app.access")

# Fields a log call may add with extra=...; anything else is left out of the JSON.
FIELDS = (
    "device",
    "tenant",
    "agent",
    "event",
    "outcome",
    "status",
    "method",
    "path",
    "duration_ms",
    "db_ms",
    "agent_ms",
    "total_ms",
    "messages",
    "released",
    "deleted",
    "recovered",
)
# The readable format: the request id, then the trace and span ids (to find the line's trace).
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s %(trace_id)s %(span_id)s] %(name)s: %(message)s"
_process_key: tuple[int, bytes] | None = None  # (pid, key), made on first use
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def device_hash(settings: Settings, device_id: str) -> str:
    """A stable pseudonym for a device id or phone number, keyed so it cannot be reversed by lookup."""
    key = settings.log_hash_key.get_secret_value().encode() if settings.log_hash_key else _fallback_key()
    return hmac.new(key, device_id.encode(), hashlib.sha256).hexdigest()[:16]


def _fallback_key() -> bytes:
    # Made on first use, never at import: a SnapStart snapshot or a forked worker would
    # otherwise share one key; a new pid gets its own.
    global _process_key
    pid = os.getpid()
    if _process_key is None or _process_key[0] != pid:
        _process_key = (pid, secrets.token_bytes(32))
    return _process_key[1]


class RequestIdFilter(logging.Filter):
    """Adds request_id, and the current span's trace_id (32 hex) and span_id (16 hex); "-" outside a trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id, record.span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"
        else:
            record.trace_id = record.span_id = "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "trace_id": getattr(record, "trace_id", "-"),
            "span_id": getattr(record, "span_id", "-"),
        }
        entry.update({name: getattr(record, name) for name in FIELDS if hasattr(record, name)})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry, default=str)


def configure_logging(settings: Settings, *, serverless: bool) -> None:
    """Install one handler on the root logger (idempotent)."""
    root = logging.getLogger()
    if any(getattr(handler, "_agent_sessions", False) for handler in root.handlers):
        return
    handler = logging.StreamHandler()
    handler._agent_sessions = True  # type: ignore[attr-defined]  # our mark, so a second call adds no handler
    handler.addFilter(RequestIdFilter())
    use_json = settings.log_format == "json" or (settings.log_format == "auto" and serverless)
    handler.setFormatter(JsonFormatter() if use_json else logging.Formatter(TEXT_FORMAT))
    root.handlers = [h for h in root.handlers if not isinstance(h, logging.StreamHandler)] + [handler]
    root.setLevel(settings.log_level.upper())


class RequestContext:
    """Pure ASGI middleware: a request id per request (from X-Request-ID when sane) and one access line."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        token = request_id.set(given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.get().encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # The path only: query strings can carry tokens (the WhatsApp handshake does).
            access.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )
            request_id.reset(token)

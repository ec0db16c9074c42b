"""The real app with every inbox, session and chat read answered SLOW_SECONDS late: a slow server for the
console and the chat page."""

from __future__ import annotations

import os

import anyio

from app.main import create_app as real_app

SLOW_PATHS = ("/api/inbox", "/api/sessions", "/api/chat")
EVENT_STREAMS = ("/api/inbox/events", "/api/chat/events")


def create_app():
    """The app behind a delay on GETs of SLOW_PATHS (not the event streams themselves)."""
    app = real_app()
    delay = float(os.environ.get("SLOW_SECONDS", "1.5"))

    async def slow(scope, receive, send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] == "http"
            and scope.get("method") == "GET"
            and path.startswith(SLOW_PATHS)
            and path not in EVENT_STREAMS
        ):
            await anyio.sleep(delay)
        await app(scope, receive, send)

    return slow

"""The real app with every inbox and session read answered SLOW_SECONDS late: a slow server for the console."""

from __future__ import annotations

import os

import anyio

from app.main import create_app as real_app

SLOW_PATHS = ("/api/inbox", "/api/sessions")


def create_app():
    """The app behind a delay on GETs of SLOW_PATHS (not the event stream itself)."""
    app = real_app()
    delay = float(os.environ.get("SLOW_SECONDS", "1.5"))

    async def slow(scope, receive, send) -> None:
        path = scope.get("path", "")
        if (scope["type"] == "http" and scope.get("method") == "GET" and path.startswith(SLOW_PATHS)
                and path != "/api/inbox/events"):
            await anyio.sleep(delay)
        await app(scope, receive, send)

    return slow

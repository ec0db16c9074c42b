"""The route path of a request: what the app's routes match, whatever root path it is served under."""

from __future__ import annotations

from starlette.types import Scope


def route_path(scope: Scope) -> str:
    """scope["path"] without scope["root_path"] at its start, as Starlette's router computes it.

    Under a root path (`uvicorn --root-path /bot`, or a proxy that sets it) the ASGI server
    puts the root path in scope["path"] too (ASGI spec; Starlette >= 0.35 relies on it): a
    request for /bot/api/chat has the route path /api/chat. A path that does not start with
    the root path (a server that left it out) is its own route path; the root path itself is "".
    """
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path

"""GET / (the web chat page) and GET /console (the operator console), with their files, from app/web.

Nothing from outside the app: the Content-Security-Policy allows only 'self', so the
page can load no script, style, image or connection elsewhere. GET /web/vendor/<name>
serves the chat page's markdown renderer and sanitizer (marked, DOMPurify), which
`make install` copies into app/web/vendor/ from the pinned npm packages (web/); where
they were never built they are 404 and the page shows replies as plain text.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import Response

from app.api.errors import ApiError

router = APIRouter(include_in_schema=False)

CSP = "default-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "chat-render.js": "text/javascript; charset=utf-8",
    "chat-stream.js": "text/javascript; charset=utf-8",
    "chat-shared.js": "text/javascript; charset=utf-8",
    "chat-api.js": "text/javascript; charset=utf-8",
    "chat-log.js": "text/javascript; charset=utf-8",
    "chat-history.js": "text/javascript; charset=utf-8",
    "chat-events.js": "text/javascript; charset=utf-8",
    "chat-send.js": "text/javascript; charset=utf-8",
    "console.html": "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console-shared.js": "text/javascript; charset=utf-8",
    "console-list.js": "text/javascript; charset=utf-8",
    "console-conversation.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",  # both pages' icon: without one, browsers ask for /favicon.ico (a 404)
}
PAGES = ("index.html", "console.html")
VENDOR = {name: "text/javascript; charset=utf-8" for name in ("marked.umd.js", "purify.min.js")}


@cache
def _asset(name: str) -> tuple[bytes, str]:
    body = resources.files("app.web").joinpath(name).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _serve(name: str, if_none_match: str | None, media_type: str | None = None) -> Response:
    try:
        body, etag = _asset(name)
    except FileNotFoundError:  # a vendor file never built (no npm at install): the page falls back
        raise ApiError(404, "not_found", "no such file") from None
    headers = {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # Revalidated on every load (cheap with the ETag), so a deploy is seen at once.
        "Cache-Control": "no-cache",
        "ETag": etag,
    }
    if if_none_match is not None and etag in (tag.strip() for tag in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type or ASSETS[name], headers=headers)


@router.get("/")
def chat_page(if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """The chat page (text/html)."""
    return _serve("index.html", if_none_match)


@router.get("/console")
def console_page(if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """The operator console (text/html): it asks for an admin key and uses the session admin API."""
    return _serve("console.html", if_none_match)


@router.get("/web/{name}")
def chat_asset(name: str, if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """The pages' stylesheets and scripts; anything else is 404."""
    if name not in ASSETS or name in PAGES:
        raise ApiError(404, "not_found", "no such file")
    return _serve(name, if_none_match)


@router.get("/web/vendor/{name}")
def vendor_asset(name: str, if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """marked and DOMPurify's browser builds (text/javascript); 404 for anything else, or when never built."""
    if name not in VENDOR:
        raise ApiError(404, "not_found", "no such file")
    return _serve(f"vendor/{name}", if_none_match, VENDOR[name])

"""GET /: the web chat page, and its script and stylesheet, served from the package (app/web).

No build step and nothing from outside the app: the Content-Security-Policy allows
only 'self', so the page can load no script, style, image or connection elsewhere.
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
}


@cache
def _asset(name: str) -> tuple[bytes, str]:
    body = resources.files("app.web").joinpath(name).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _serve(name: str, if_none_match: str | None) -> Response:
    body, etag = _asset(name)
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
    return Response(body, media_type=ASSETS[name], headers=headers)


@router.get("/")
def chat_page(if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """The chat page (text/html)."""
    return _serve("index.html", if_none_match)


@router.get("/web/{name}")
def chat_asset(name: str, if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """The page's stylesheet and script; anything else is 404."""
    if name not in ASSETS or name == "index.html":
        raise ApiError(404, "not_found", "no such file")
    return _serve(name, if_none_match)

"""Route modules imported on the first request under their paths.

A route module costs its import and FastAPI's analysis of every route in it (signatures,
response models): about 115 ms for all of ours on a cold start (`python -X importtime`),
most of the app's own share of it. A request needs one area: a health check none of the
admin API, a WhatsApp delivery none of the web chat. So each module's router is put in
place by the first request under one of its paths, once per process; the request is then
dispatched again, to the routes that now stand where the placeholder stood (route order is
kept). A server imports every module at start (`load_all` from its lifespan), so none of
its requests pays, and the OpenAPI schema always describes every route.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import URLPath
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from app.api.paths import route_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Area:
    """A route module (its `router`) and the paths it serves: exact, or `/prefix/*` for the prefix and what is under it.

    `/prefix/*` covers `/prefix` itself too: when no route matches a path, Starlette tries it
    again with the trailing slash added or removed, and that retry must load the area (and get
    the area's own answer), not redirect to a path the placeholder merely looked like it served.
    """

    module: str
    paths: tuple[str, ...]

    def covers(self, path: str) -> bool:
        return any(path == p[:-2] or path.startswith(p[:-1]) if p.endswith("/*") else path == p for p in self.paths)


class LazyRouter(BaseRoute):
    """Stands in app.router.routes for an area's router until a request's path is one of the area's."""

    def __init__(self, app: FastAPI, area: Area) -> None:
        self.app, self.area = app, area

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] in ("http", "websocket") and self.area.covers(route_path(scope)):
            return Match.FULL, {}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Synchronous, with no await between the import and the swap: on one event loop no other
        # request can see the routes half changed. Dispatched again, as if it had just arrived.
        self.load()
        await self.app.router.app(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        # Asked for a route by name (app.url_path_for, request.url_for): the area's routes may be it.
        self.load()
        return self.app.router.url_path_for(name, **path_params)

    def load(self) -> None:
        """Import the module and put its router where this placeholder stands (no-op once done)."""
        routes = self.app.router.routes
        if self not in routes:
            return
        router = importlib.import_module(self.area.module).router
        before = len(routes)
        self.app.include_router(router)  # appended last, as FastAPI includes a router...
        added = routes[before:]
        del routes[before:]
        at = routes.index(self)
        routes[at : at + 1] = added  # ...then moved to this placeholder's place
        logger.debug("routes of %s loaded", self.area.module)


def install(app: FastAPI, areas: Iterable[Area]) -> None:
    """A placeholder for each area, in order, at the end of app's routes."""
    for area in areas:
        app.router.routes.append(LazyRouter(app, area))


def load_all(app: FastAPI) -> None:
    """Import every area still waiting (a server at start, the OpenAPI schema), then analyse the routes."""
    for route in list(app.router.routes):
        if isinstance(route, LazyRouter):
            route.load()
    for route in app.router.routes:
        # FastAPI 0.16x analyses an included router's routes (dependants, their pydantic
        # adapters) on its first match: about 90 ms for ours, paid by whichever request
        # comes first, in a burst by all the requests queued behind it. Done here instead.
        # A FastAPI without the method (older, or a later change) analyses them at include.
        candidates = getattr(route, "effective_candidates", None)
        if callable(candidates):
            candidates()

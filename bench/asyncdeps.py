"""Diagnostic factory: the app with its three plain-`def` dependencies overridden by `async def` twins.

FastAPI runs a plain-`def` dependency in the thread pool, one hand-off each, so
POST /api/chat makes four thread-pool trips per request (settings, database,
pipeline, then the route). The twins below do the same work on the event loop,
leaving the route's own trip. Serve with
`python -m uvicorn bench.asyncdeps:create_app --factory`, or
`python -m bench.pyspy --app bench.asyncdeps:create_app`, to compare; nothing in
app/ changes.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from app.api import deps
from app.core.config import Settings
from app.core.db import Database
from app.main import create_app as create_real_app
from app.pipeline import Pipeline
from app.sessions import SessionService


async def settings(request: Request) -> Settings:
    return request.app.state.settings


async def database(request: Request) -> Database:
    return request.app.state.database


async def pipeline(request: Request) -> Pipeline:
    state = request.app.state
    return Pipeline(state.database.engine, state.registry, state.settings)


async def sessions(request: Request) -> SessionService:
    state = request.app.state
    return SessionService(state.database.engine, default_ttl=state.settings.default_session_ttl,
                          context_cap=state.settings.context_list_cap)


def create_app() -> FastAPI:
    app = create_real_app()
    app.dependency_overrides.update({
        deps.get_settings: settings, deps.get_database: database,
        deps.get_pipeline: pipeline, deps.get_sessions: sessions,
    })
    return app

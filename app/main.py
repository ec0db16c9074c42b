"""The FastAPI application factory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app.api import errors
from app.api.limits import KIB, BodyLimit
from app.api.routes import chat, cron, docs, health, inbox, sessions, stats, takeover, web, whatsapp
from app.core.config import Settings
from app.core.db import Database
from app.core.logging import RequestContext
from app.services import Services, build_services


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    database: Database | None = None,
    serverless: bool = False,
) -> FastAPI:
    """Build the app around the process's services; the database engine is created on first use, never here."""
    if services is None:
        services = build_services(settings or Settings(), serverless=serverless, database=database)
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # After the server's own grace period (uvicorn's timeout_graceful_shutdown, which
        # cancels the turns still running): no new turn, and this loop's pool is closed.
        services.runtime.closing = True
        await services.database.aclose()

    # /docs is app/api/routes/docs.py (assets from our own origin, a strict CSP); no ReDoc.
    app = FastAPI(title="agent-sessions", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.services = services  # read only by app/api/deps.py
    errors.install(app)
    limits = {
        "/api/chat": 64 * KIB,
        "/api/webhooks/": 1024 * KIB,
        "/api/sessions/import": services.settings.import_max_bytes,
    }
    app.add_middleware(BodyLimit, limits=limits, default=256 * KIB)
    app.add_middleware(RequestContext)  # outermost: every response and log line gets the request id
    app.include_router(health.router)
    app.include_router(chat.router)
    app.include_router(cron.router)
    app.include_router(whatsapp.router)
    app.include_router(takeover.router)
    app.include_router(inbox.router)
    app.include_router(sessions.router)
    app.include_router(stats.router)
    app.include_router(web.router)
    docs.install(app)
    return app

"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from app.agents import load_registry
from app.api import errors
from app.api.limits import KIB, BodyLimit
from app.api.routes import chat, cron, health, sessions, stats, takeover, web, whatsapp
from app.channels.whatsapp import WhatsAppSender
from app.core.config import Settings
from app.core.db import Database
from app.core.logging import RequestContext


def create_app(
    settings: Settings | None = None, *, database: Database | None = None, serverless: bool = False
) -> FastAPI:
    """Build the app; the database engine is created on first use, never at import."""
    settings = settings or Settings()
    app = FastAPI(title="agent-sessions", version="0.1.0")
    app.state.settings = settings
    app.state.database = database or Database(settings, serverless=serverless)
    app.state.registry = load_registry(settings.agents)
    app.state.whatsapp = WhatsAppSender(settings)  # one Graph API client per app; connects on first send
    errors.install(app)
    limits = {"/api/chat": 64 * KIB, "/api/webhooks/": 1024 * KIB, "/api/sessions/import": 16 * 1024 * KIB}
    app.add_middleware(BodyLimit, limits=limits, default=256 * KIB)
    app.add_middleware(RequestContext)  # outermost: every response and log line gets the request id
    app.include_router(health.router)
    app.include_router(chat.router)
    app.include_router(cron.router)
    app.include_router(whatsapp.router)
    app.include_router(takeover.router)
    app.include_router(sessions.router)
    app.include_router(stats.router)
    app.include_router(web.router)
    return app

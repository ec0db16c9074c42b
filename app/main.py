"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from app.api import errors
from app.api.routes import health
from app.core.config import Settings
from app.core.db import Database


def create_app(
    settings: Settings | None = None, *, database: Database | None = None, serverless: bool = False
) -> FastAPI:
    """Build the app; the database engine is created on first use, never at import."""
    settings = settings or Settings()
    app = FastAPI(title="agent-sessions", version="0.1.0")
    app.state.settings = settings
    app.state.database = database or Database(settings, serverless=serverless)
    errors.install(app)
    app.include_router(health.router)
    return app

"""AWS Lambda entry points: `handler` (API Gateway, through Mangum) and `cleanup_handler` (schedule)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from mangum import Mangum

from app.cleanup import cleanup_app
from app.core.logging import configure_logging
from app.main import create_app


def http_handler(app: FastAPI) -> Mangum:
    """A Lambda handler for API Gateway (HTTP API v2 or REST v1 events) that serves app."""
    return Mangum(app, lifespan="off", api_gateway_base_path=app.state.settings.api_gateway_base_path)


def cleanup(app: FastAPI) -> dict[str, int]:
    """One cleanup run on app's own (lazily created) engine, as a JSON-ready dict."""
    return cleanup_app(app.state).as_dict()


# Built once per execution environment, from the environment's Settings. Importing never
# connects: the engine is created on first use, so a missing DATABASE_URL is reported there
# (ConfigurationError, HTTP 500 configuration_error) instead of failing every cold start.
app = create_app(serverless=True)
configure_logging(app.state.settings, serverless=True)
handler = http_handler(app)


def cleanup_handler(event: Any, context: Any) -> dict[str, int]:
    """Scheduled cleanup; the event is ignored (EventBridge rule and Scheduler payloads differ)."""
    return cleanup(app)

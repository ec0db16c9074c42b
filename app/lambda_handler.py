"""AWS Lambda entry points.

`handler` (API Gateway, ALB, Function URL, through Mangum) and `cleanup_handler` (schedule)."""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from mangum import Mangum
from pydantic import ValidationError

from app import telemetry
from app.api import lazy
from app.cleanup import scheduled_cleanup
from app.core.config import Settings, settings_problem
from app.core.logging import configure_logging
from app.main import create_app
from app.services import Services, build_services

logger = logging.getLogger("app.startup")
# Lambda's AWS_LAMBDA_INITIALIZATION_TYPE values whose init runs before any request arrives (SnapStart
# snapshots it; provisioned concurrency runs it ahead): there every route module is imported at init,
# elsewhere ("on-demand") each on its area's first request (app/api/lazy.py).
INIT_OFF_THE_REQUEST_PATH = ("snap-start", "provisioned-concurrency")
CONFIGURATION_ERROR = {"error": {"code": "configuration_error", "message": "the service is not configured correctly"}}


def http_handler(app: FastAPI, settings: Settings) -> Mangum:
    """A Lambda handler for API Gateway (REST v1, HTTP v2), ALB and Function URL events that serves app."""
    return Mangum(app, lifespan="off", api_gateway_base_path=settings.api_gateway_base_path)


def cleanup(services: Services) -> dict[str, int]:
    """One cleanup run on the services' own (lazily created) engine, as a JSON-ready dict."""
    return scheduled_cleanup(services).as_dict()


def misconfigured_app() -> FastAPI:
    """The app served when Settings are invalid: 500 configuration_error, without details, to every request."""
    fallback = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @fallback.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    async def _refuse(path: str) -> JSONResponse:
        return JSONResponse(CONFIGURATION_ERROR, status_code=500)

    return fallback


def _build() -> tuple[FastAPI, Mangum, Services | None]:
    # Built once per execution environment, from the environment's Settings. Importing never
    # connects: the engine is created on first use. Invalid settings are logged once, here,
    # as one line without values, and every request then answers 500 configuration_error.
    try:
        settings = Settings()
    except ValidationError as err:
        configure_logging(Settings.model_construct(), serverless=True)
        logger.error("refusing to serve: %s", settings_problem(err))
        fallback = misconfigured_app()
        return fallback, Mangum(fallback, lifespan="off"), None
    configure_logging(settings, serverless=True)
    built = build_services(settings, serverless=True)
    web = create_app(services=built)
    if os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") in INIT_OFF_THE_REQUEST_PATH:
        lazy.load_all(web)  # imported before the snapshot (or the warm pool), so no request pays for it
    return web, http_handler(web, settings), built


app, _serve, services = _build()


def handler(event: Any, context: Any) -> dict[str, Any]:
    """One HTTP event; spans and metrics buffered during it are exported before it returns (when
    OTEL_* configures an exporter), since Lambda may freeze the environment until the next event."""
    try:
        return _serve(event, context)
    finally:
        telemetry.flush()


def cleanup_handler(event: Any, context: Any) -> dict[str, Any]:
    """Scheduled cleanup; the event is ignored (EventBridge rule and Scheduler payloads differ)."""
    if services is None:
        return dict(CONFIGURATION_ERROR)
    try:
        return cleanup(services)
    finally:
        telemetry.flush()

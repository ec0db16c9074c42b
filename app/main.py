"""The FastAPI application factory."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import FastAPI

from app import telemetry
from app.api import errors, lazy
from app.api.admission import Admit
from app.api.limits import KIB, BodyLimit
from app.api.routes import docs
from app.cleanup import keep_recovering
from app.core import collector
from app.core.config import Settings
from app.core.engine import Database, lock_pools
from app.core.logging import RequestContext, configure_logging
from app.services import Services, build_services
from app.stopping import on_stop_signals
from app.streams.signals import Listener

logger = logging.getLogger(__name__)

# How long a shutdown waits for cancelled turns to give their leases back (a statement each).
SETTLE_SECONDS = 10.0


def listener(services: Services) -> Callable[[], Coroutine[Any, Any, None]] | None:
    """The listener's task for a server's lifespan (app/streams/signals.py), or None where a LISTEN
    cannot hold: through a transaction-mode pooler the draft writers and the waiters poll instead."""
    if services.settings.db_pooler == "transaction":
        return None

    async def listen() -> None:
        pools = lock_pools(services.database.engine)
        runtime = services.runtime
        await Listener(runtime.streams, runtime.wakeups, pools.config.conninfo, pools.connect_kwargs()).run()

    return listen


def lifespan_tasks(services: Services) -> list[Callable[[], Coroutine[Any, Any, None]]]:
    """What a server runs beside its requests: the listener (where a LISTEN can hold) and the
    recovery pass (unless RECOVERY_INTERVAL_SECONDS is 0). None on serverless, should a platform
    run the lifespan there: a function instance holds no connection between requests, and the
    scheduled cleanup recovers."""
    if services.database.serverless:
        return []
    tasks = []
    listen = listener(services)
    if listen is not None:
        tasks.append(listen)
    if services.settings.recovery_interval_seconds:
        tasks.append(functools.partial(keep_recovering, services))
    return tasks


# The requests that start a turn, admitted a few at a time (app/api/admission.py).
TURN_PATHS = ("/api/chat", "/api/chat/stream", "/api/webhooks/whatsapp")

# The route modules, in the order their routes are matched, with the paths each serves (app/api/lazy.py):
# each is imported by the first request under one of them. A path missing here is a 404 until another
# area's module has loaded it: tests/api/test_lazy_routes.py checks every route is covered by its area.
AREAS = (
    lazy.Area("app.api.routes.health", ("/api/health",)),
    lazy.Area("app.api.routes.stream", ("/api/chat/stream", "/api/chat/stream/*", "/api/chat/stop")),
    lazy.Area("app.api.routes.chat", ("/api/chat", "/api/chat/*", "/api/devices")),
    lazy.Area("app.api.routes.cron", ("/api/cron/*",)),
    lazy.Area("app.api.routes.whatsapp", ("/api/webhooks/whatsapp",)),
    lazy.Area("app.api.routes.takeover", ("/api/sessions/*",)),
    lazy.Area("app.api.routes.inbox", ("/api/inbox", "/api/inbox/*", "/api/agents")),
    lazy.Area("app.api.routes.sessions", ("/api/sessions", "/api/sessions/*")),
    lazy.Area("app.api.routes.stats", ("/api/stats",)),
    lazy.Area("app.api.routes.web", ("/", "/console", "/web/*")),
    lazy.Area("app.api.routes.metrics", ("/metrics",)),
)


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
    telemetry.install(services.settings, serverless=services.database.serverless)  # once per process: OTEL_*

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The runtime's task group holds the work that outlives a request (a webhook's turns
        # after its answer, a streamed reply whose client left). At shutdown, after the
        # server's own grace period (uvicorn's timeout_graceful_shutdown, which cancels the
        # requests still running): no new turn, that work gets SHUTDOWN_GRACE_SECONDS and is
        # cancelled; uvicorn does not wait for the turns it cancelled, so wait here while they
        # give their leases back (one statement each), then close this loop's HTTP client and pool.
        if not services.database.serverless:
            lazy.load_all(app)  # a server's requests never pay for a route module's import
            collector.settle_after_start()
        # SIGTERM reaches the app before the server's wait for open connections (app/stopping.py):
        # the event streams end then, and only turns hold the grace period.
        with on_stop_signals(services.runtime.stop):
            async with services.runtime.serve(*lifespan_tasks(services)):
                yield
        if not await services.runtime.settle(SETTLE_SECONDS):
            logger.warning("%s leases still held at shutdown: they lapse after LEASE_SECONDS", services.runtime.holders)
        await services.whatsapp.aclose()
        await services.database.aclose()

    # /docs is app/api/routes/docs.py (assets from our own origin, a strict CSP); no ReDoc.
    app = FastAPI(title="agent-sessions", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.services = services  # read only by app/api/deps.py
    errors.install(app)
    limits = {
        "/api/chat": 64 * KIB,
        "/api/chat/stream": 1024 * KIB,  # the AI SDK sends the whole conversation with each message
        "/api/webhooks/": 1024 * KIB,
        "/api/sessions/import": services.settings.import_max_bytes,
    }
    # Innermost of ours: a turn's request is admitted once BodyLimit has let its body through.
    app.add_middleware(Admit, admission=services.runtime.admission, paths=TURN_PATHS)
    app.add_middleware(BodyLimit, limits=limits, default=256 * KIB)
    # A request the server cancels at shutdown, waiting for a place or a turn: a typed 503, not a plain 500.
    app.add_middleware(errors.AnswerInterrupted)
    app.add_middleware(RequestContext)  # outermost: every response and log line gets the request id
    lazy.install(app, AREAS)
    schema = app.openapi

    def openapi() -> dict[str, Any]:
        lazy.load_all(app)  # the schema describes every route, loaded yet or not
        return schema()

    app.openapi = openapi  # type: ignore[method-assign] # FastAPI's documented way to change the schema
    docs.install(app)
    telemetry.instrument(app)  # a span per request, when traces go somewhere
    return app


def serve_app() -> FastAPI:
    """The factory `python -m app serve` hands uvicorn: the CLI's logging, then the app.

    serve execs uvicorn, so the logging its own process configured is gone; without this
    the app's lines (app.access, "message handled", the agents') went nowhere.
    """
    settings = Settings()
    configure_logging(settings, serverless=False)
    return create_app(settings)

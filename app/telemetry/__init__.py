"""Traces and metrics (OpenTelemetry): what the pipeline, the channels and the cleanup record.

The rest of the app calls the functions here; they act on the active `Telemetry`
(app/telemetry/instruments.py): the one `install` built from the OTEL_* variables and
METRICS (once per process: the global providers can be set only once), or one a test
put in place with `use`. With nothing configured every call goes to the API's no-op
proxies. Setup and the variables: app/telemetry/setup.py; what is emitted: the README.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from app.core.config import Settings
from app.telemetry.instruments import Telemetry, TurnRecord, Wait

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

_default = Telemetry()
_installed = False
_override: Telemetry | None = None
# The wait of the message this task handles: a waiter that wins the lease ends it (lease_taken()).
_wait: contextvars.ContextVar[Wait | None] = contextvars.ContextVar("telemetry_wait", default=None)

__all__ = ["Telemetry", "TurnRecord", "Wait", "active", "install", "use"]


def active() -> Telemetry:
    return _override or _default


def install(settings: Settings, *, serverless: bool) -> Telemetry:
    """Build the process's telemetry from the environment on the first call; later calls return it."""
    global _default, _installed
    if not _installed:
        from app.telemetry.setup import build

        _default, _installed = build(settings, serverless=serverless), True
    return _default


@contextlib.contextmanager
def use(telemetry: Telemetry) -> Iterator[Telemetry]:
    """Make telemetry the active one inside the block (tests: providers with in-memory exporters)."""
    global _override
    before, _override = _override, telemetry
    try:
        yield telemetry
    finally:
        _override = before


def instrument(app: FastAPI) -> None:
    """A server span per request (FastAPI instrumentation) when traces go somewhere; otherwise nothing."""
    from app.api import lazy

    telemetry = active()
    ours = telemetry.tracer_provider is not None
    if ours or _instrumented_elsewhere():
        # An instrumentation, ours or one installed before the app (below), names a request's span
        # by the route it matches when the request starts: every route must stand in place then,
        # not an area's placeholder (app/api/lazy.py).
        lazy.load_all(app)
    if not ours:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        excluded_urls="/metrics",
    )


def _instrumented_elsewhere() -> bool:
    """Whether FastAPI was instrumented before the app was made (auto-instrumentation, as the ADOT
    Lambda layer's wrapper runs it): its module is imported then, so nothing is imported to ask."""
    module = sys.modules.get("opentelemetry.instrumentation.fastapi")
    return module is not None and bool(module.FastAPIInstrumentor().is_instrumented_by_opentelemetry)


def flush(timeout_ms: int = 2000) -> None:
    """Export what is buffered (a Lambda invocation's end: the environment may be frozen next)."""
    telemetry = active()
    for provider in (telemetry.tracer_provider, telemetry.meter_provider):
        if provider is not None:
            try:
                provider.force_flush(timeout_ms)
            except Exception:  # telemetry never fails a request
                logger.warning("telemetry flush failed", exc_info=True)


# -- what the pipeline and the channels call ---------------------------------------------------------


def span(name: str, settings: Settings, tenant: str, device: str) -> contextlib.AbstractContextManager[Any]:
    """A current span for one step on a device (claim, finish), with its tenant and device hash."""
    telemetry = active()
    return telemetry.span(name, lambda: telemetry.device(settings, tenant, device))


@contextlib.contextmanager
def waiting(settings: Settings, tenant: str, device: str, reason: str = "lease_held") -> Iterator[Wait]:
    """A message waits for its device; end(outcome) the yielded Wait, or it ends "queued" on exit."""
    with active().waiting(settings, tenant, device, reason) as wait:
        token = _wait.set(wait)
        try:
            yield wait
        finally:
            _wait.reset(token)


def lease_taken() -> None:
    """The waiting message's task won the device's lease: its wait is over (the turns it runs are not in it)."""
    wait = _wait.get()
    if wait is not None:
        wait.end("lease_taken")


def turn(settings: Settings, lease: Any, turn: Any, agent: str) -> contextlib.AbstractContextManager[TurnRecord]:
    """The span of one agent turn; call .outcome(outcome) on what it yields (None: the lease was lost)."""
    return active().turn(settings, lease, turn, agent)


def sdk_run(agent: str) -> contextlib.AbstractContextManager[Callable[[Any], None]]:
    """The span of an OpenAI Agents SDK run (app/agents/openai_agents.py); call what it yields with the RunResult."""
    return active().sdk_run(agent)


def renewal(result: str) -> None:
    """A lease renewal during a turn: "renewed", "lost" or "failed"."""
    active().renewal(result)


def lease_lost(where: str) -> None:
    active().leases_lost.add(1, {"where": where})


def rate_limited(scope: str) -> None:
    """A message or request refused past a rate limit: scope "device" or "address"."""
    active().rate_limited.add(1, {"scope": scope})


def refused(reason: str) -> None:
    """A message refused before any work: "overloaded" (MAX_CONCURRENT_TURNS) or "closing"."""
    active().refused.add(1, {"reason": reason})


def outbox_backlog(devices: int) -> None:
    active().backlog.set(devices)


def cleaned(released: int, deleted: int) -> None:
    telemetry = active()
    telemetry.released.add(released)
    telemetry.deleted.add(deleted)


def whatsapp_send(send: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate the Graph API send (sync or async, returning a SendOutcome): a client span and a count by status."""
    if inspect.iscoroutinefunction(send):

        @functools.wraps(send)
        async def traced_async(*args: Any, **kwargs: Any) -> Any:
            with active().send_span() as note:
                return note(await send(*args, **kwargs))

        return traced_async

    @functools.wraps(send)
    def traced(*args: Any, **kwargs: Any) -> Any:
        with active().send_span() as note:
            return note(send(*args, **kwargs))

    return traced

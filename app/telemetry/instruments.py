"""The spans and metrics the service records, through the OpenTelemetry API only.

A `Telemetry` holds one tracer and the metric instruments, made from the providers it
is given, or from the global ones (the API's proxies, which stay no-ops until a
provider is installed: app/telemetry/setup.py). Nothing here imports the SDK.

Spans (names and attributes; no device id, phone number or message text ever: a device
is `agent_sessions.device.hash`, the keyed hash the logs use):

| span                     | attributes                                                                    |
|--------------------------|-------------------------------------------------------------------------------|
| `agent_sessions.claim`   | tenant, device hash                                                           |
| `agent_sessions.wait`    | reason (`lease_held`), queued (this process's waiters on the device), outcome |
| `invoke_agent {agent}`   | gen_ai.operation.name, gen_ai.agent.name, gen_ai.conversation.id (session id), |
|                          | turn.attempt, turn.messages (burst size), turn.outcome; `lease renewed` events |
| `openai_agents.run {agent}` | an OpenAI Agents SDK run inside a turn (child of `invoke_agent`):          |
|                          | gen_ai.agent.name (the SDK agent it starts at), agent_sessions.sdk.last_agent, |
|                          | agent_sessions.sdk.requests (model calls), gen_ai.usage.input/output_tokens   |
| `agent_sessions.finish`  | tenant, device hash                                                           |
| `whatsapp.send`          | whatsapp.status, whatsapp.attempts                                            |

A failed step carries `error.type` and an error status, never the exception's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace import INVALID_SPAN, ProxyTracerProvider, Span, SpanKind, Status, StatusCode

from app.core.config import Settings
from app.core.logging import device_hash

SCOPE = "agent-sessions"
SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
COUNTS = [1, 2, 3, 5, 10, 20, 50, 100]
TIMEOUT_PREFIX = "AgentTimeout"  # app/pipeline/turn.py's error text of a turn cut at AGENT_TIMEOUT_SECONDS
# Turn outcomes that are faults of the service: the span's status is an error. A turn the person
# stopped (POST /api/chat/stop) is not one; a cancelled one (shutdown, its task gone) is.
FAULTS = {"timed_out", "failed", "lease_lost", "cancelled", "error"}


def turn_outcome(outcome: Any) -> str:
    """answered, handoff, released, stopped, timed_out, failed or lease_lost, for an app.ledger.Outcome.

    None: the lease was lost. stopped: POST /api/chat/stop ended the turn (its partial reply is kept).
    """
    if outcome is None:
        return "lease_lost"
    if outcome.metadata.get("stopped"):
        return "stopped"
    if outcome.status == "failed":
        return "timed_out" if (outcome.error or "").startswith(TIMEOUT_PREFIX) else "failed"
    if outcome.agent_after != outcome.agent_before:
        return "released" if outcome.agent_after is None else "handoff"
    return "answered"


class Wait:
    """A message waiting for its device: a span that is not current (turns run after it are not its children)."""

    def __init__(self, span: Span, histogram: Any, attributes: dict[str, Any]):
        self.span, self.histogram, self.attributes = span, histogram, attributes
        self.started = time.perf_counter()
        self.ended = False

    def end(self, outcome: str) -> None:
        """Idempotent: the first outcome given wins (lease_taken, answered, queued, held, cancelled)."""
        if self.ended:
            return
        self.ended = True
        self.span.set_attribute("agent_sessions.wait.outcome", outcome)
        self.histogram.record(time.perf_counter() - self.started, {**self.attributes, "outcome": outcome})
        self.span.end()


class TurnRecord:
    """What a turn span learns once the agents are done; see Telemetry.turn."""

    def __init__(self, span: Span):
        self.span = span
        self.label: str | None = None
        self.answered_by: str | None = None

    def outcome(self, outcome: Any) -> None:
        self.label = turn_outcome(outcome)
        if outcome is not None:
            self.answered_by = outcome.agent
            if outcome.error:
                self.span.set_attribute("error.type", outcome.error.split(":", 1)[0][:100])


class Telemetry:
    """The tracer and instruments of one set of providers (None: the global ones, no-ops until installed).

    prometheus: the prometheus_client CollectorRegistry that GET /metrics renders, or None (off).
    """

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None, prometheus: Any = None):
        self.tracer_provider, self.meter_provider, self.prometheus = tracer_provider, meter_provider, prometheus
        self.tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
        count, seconds = (
            meter.create_counter,
            functools.partial(meter.create_histogram, unit="s", explicit_bucket_boundaries_advisory=SECONDS),
        )
        self.turns = count("agent_sessions.turns", "{turn}", "agent turns, by agent and outcome")
        self.turn_duration = seconds(
            "agent_sessions.turn.duration", description="agent turn time, by agent and outcome"
        )
        self.wait_duration = seconds("agent_sessions.wait.duration", description="time a message waited for its device")
        self.queued = meter.create_histogram(
            "agent_sessions.device.queued",
            "{message}",
            "messages of one device waiting in this process when one more starts to wait (itself included)",
            explicit_bucket_boundaries_advisory=COUNTS,
        )
        self.renewals = count("agent_sessions.lease.renewals", "{renewal}", "lease renewals during turns, by result")
        self.leases_lost = count("agent_sessions.lease.lost", "{lease}", "leases lost mid-turn, by where it was seen")
        self.rate_limited = count("agent_sessions.messages.rate_limited", "{message}", "refused past a rate limit")
        self.refused = count("agent_sessions.messages.refused", "{message}", "refused: instance full or closing")
        self.sends = count("agent_sessions.whatsapp.sends", "{message}", "WhatsApp sends, by status")
        self.backlog = meter.create_gauge(
            "agent_sessions.outbox.backlog", "{device}", "devices with a WhatsApp reply due again, at the last check"
        )
        self.released = count("agent_sessions.cleanup.released", "{lock}", "expired locks the cleanup released")
        self.deleted = count("agent_sessions.cleanup.deleted", "{row}", "rows the cleanup deleted (retention)")
        self._waiting: dict[tuple[str, str], int] = {}

    # -- spans -------------------------------------------------------------------------------------

    def tracing(self) -> bool:
        """Whether a span can record: a provider was given, or one was installed globally.

        Until then the API's proxy hands out non-recording spans, and making one current costs
        a context switch per step (about 4% of a server's CPU under the chat load, measured
        with bench/pyspy.py); with none recording, the steps skip it.
        """
        return self.tracer_provider is not None or not isinstance(trace.get_tracer_provider(), ProxyTracerProvider)

    @contextlib.contextmanager
    def _current(self, name: str, kind: SpanKind) -> Iterator[Span]:
        if not self.tracing():
            yield INVALID_SPAN
            return
        with self.tracer.start_as_current_span(
            name, kind=kind, record_exception=False, set_status_on_exception=False
        ) as span:
            yield span

    @staticmethod
    def device(settings: Settings, tenant: str, device: str) -> dict[str, Any]:
        return {"agent_sessions.tenant": tenant, "agent_sessions.device.hash": device_hash(settings, device)}

    @contextlib.contextmanager
    def span(
        self, name: str, attributes: Callable[[], dict[str, Any]], kind: SpanKind = SpanKind.INTERNAL
    ) -> Iterator[Span]:
        """A current span; an exception marks it (error.type, error status) and goes on.

        attributes is called only when the span records: with telemetry off no hash is computed.
        """
        with self._current(name, kind) as span:
            if span.is_recording():
                span.set_attributes(attributes())
            try:
                yield span
            except BaseException as err:
                span.set_attribute("error.type", type(err).__name__)
                span.set_status(Status(StatusCode.ERROR))
                raise

    @contextlib.contextmanager
    def waiting(self, settings: Settings, tenant: str, device: str, reason: str) -> Iterator[Wait]:
        key = (tenant, device)
        queued = self._waiting[key] = self._waiting.get(key, 0) + 1
        self.queued.record(queued)
        span = self.tracer.start_span("agent_sessions.wait") if self.tracing() else INVALID_SPAN
        if span.is_recording():
            span.set_attributes(
                self.device(settings, tenant, device)
                | {
                    "agent_sessions.wait.reason": reason,
                    "agent_sessions.wait.queued": queued,
                }
            )
        wait = Wait(span, self.wait_duration, {"reason": reason})
        try:
            yield wait
        except BaseException as err:
            wait.span.set_attribute("error.type", type(err).__name__)
            wait.end("cancelled" if _cancelled(err) else "error")
            raise
        finally:
            wait.end("queued")
            left = self._waiting.pop(key) - 1
            if left:
                self._waiting[key] = left

    @contextlib.contextmanager
    def turn(self, settings: Settings, lease: Any, turn: Any, agent: str) -> Iterator[TurnRecord]:
        """The span of one agent turn (current while the agents run: their own spans nest under it)."""
        started = time.perf_counter()
        with self._current(f"invoke_agent {agent}", SpanKind.INTERNAL) as span:
            if span.is_recording():
                span.set_attributes(
                    self.device(settings, lease.tenant, lease.device)
                    | {
                        "gen_ai.operation.name": "invoke_agent",
                        "gen_ai.agent.name": agent,
                        "agent_sessions.turn.attempt": turn.attempt,
                        "agent_sessions.turn.messages": len(turn.messages),
                        "agent_sessions.message.id": turn.last.id,
                    }
                )
                if turn.last.session_id:
                    span.set_attribute("gen_ai.conversation.id", turn.last.session_id)
            record = TurnRecord(span)
            try:
                yield record
            except BaseException as err:
                # Cancelled (a shutdown, the request's task gone): the lease is given back, the turn runs again.
                record.label = "cancelled" if _cancelled(err) else "error"
                span.set_attribute("error.type", type(err).__name__)
                raise
            finally:
                label = record.label or "error"
                span.set_attribute("agent_sessions.turn.outcome", label)
                if record.answered_by and record.answered_by != agent:
                    span.set_attribute("agent_sessions.turn.answered_by", record.answered_by)
                if label in FAULTS:
                    span.set_status(Status(StatusCode.ERROR))
                labels = {"gen_ai.agent.name": agent, "outcome": label}
                self.turns.add(1, labels)
                self.turn_duration.record(time.perf_counter() - started, labels)

    @contextlib.contextmanager
    def sdk_run(self, agent: str) -> Iterator[Callable[[Any], None]]:
        """A span around one OpenAI Agents SDK run starting at SDK agent `agent`; call what it yields with the result.

        The SDK's own spans go to its tracing processors, not to OpenTelemetry: this span is
        what nests under the turn (the time in the models and tools, and the tokens).
        """
        with self.span(f"openai_agents.run {agent}", lambda: {"gen_ai.agent.name": agent}) as span:

            def note(result: Any) -> None:
                if not span.is_recording():
                    return
                usage = result.context_wrapper.usage
                span.set_attributes(
                    {
                        "agent_sessions.sdk.last_agent": result.last_agent.name,
                        "agent_sessions.sdk.requests": usage.requests,
                        "gen_ai.usage.input_tokens": usage.input_tokens,
                        "gen_ai.usage.output_tokens": usage.output_tokens,
                    }
                )

            yield note

    # -- events and counts -------------------------------------------------------------------------

    def renewal(self, result: str) -> None:
        """A lease renewal during a turn: renewed, lost or failed (store unreachable); an event on the turn span."""
        trace.get_current_span().add_event("lease renewed" if result == "renewed" else f"lease renewal {result}")
        self.renewals.add(1, {"result": result})
        if result == "lost":
            self.leases_lost.add(1, {"where": "renewal"})

    @contextlib.contextmanager
    def send_span(self) -> Iterator[Callable[[Any], Any]]:
        with self.span("whatsapp.send", dict, SpanKind.CLIENT) as span:  # a call to another service

            def note(outcome: Any) -> Any:
                span.set_attribute("agent_sessions.whatsapp.status", outcome.status)
                span.set_attribute("agent_sessions.whatsapp.attempts", outcome.attempts)
                if outcome.status != "sent":
                    span.set_status(Status(StatusCode.ERROR))
                self.sends.add(1, {"status": outcome.status})
                return outcome

            yield note


def _cancelled(err: BaseException) -> bool:
    # The loop is asyncio's (anyio's backend here): a cancelled scope raises its CancelledError.
    return isinstance(err, asyncio.CancelledError)

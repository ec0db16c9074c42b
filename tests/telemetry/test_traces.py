"""Traces: a chat request's spans, their GenAI attributes, agents' own spans under the turn, outcomes."""

from __future__ import annotations

import threading

import anyio
import anyio.lowlevel
from opentelemetry.trace import SpanKind, StatusCode

from app.agents import AgentInput, AgentReply, Handoff
from app.core.logging import device_hash
from app.pipeline import Inbound, Pipeline
from tests.conftest import make_settings
from tests.utils import aio
from tests.utils.agents import Gate, Scripted, wait_for
from tests.utils.apps import app_client, use_registry
from tests.utils.states import row
from tests.utils.telemetry import Recorded, recording

DEVICE = "7e1f0c2a-5b6d-4e8f-9a0b-1c2d3e4f5a6b"
TEXT = "my phone is +44 7700 900123"


def pipeline_of(engine, database_url, registry, **overrides) -> Pipeline:
    return Pipeline(engine, registry, make_settings(database_url, log_hash_key="k", **overrides))


def test_a_chat_request_is_one_trace_with_claim_turn_and_finish(database_url, engine):
    settings = make_settings(database_url, log_hash_key="k")
    with recording() as recorded, app_client(settings) as client:
        use_registry(
            client, {"manager": Scripted("manager", action=Handoff("billing")), "billing": Scripted("billing")}
        )
        response = client.post("/api/chat", json={"message": TEXT}, headers={"X-Device-ID": DEVICE})
    assert response.status_code == 200
    request = [span for span in recorded.spans() if span.kind == SpanKind.SERVER]
    assert len(request) == 1 and request[0].name == "POST /api/chat"
    claim, turn, finish = (
        recorded.one("agent_sessions.claim"),
        recorded.one("invoke_agent*"),
        recorded.one("agent_sessions.finish"),
    )
    for span in (claim, turn, finish):
        assert span.parent.span_id == request[0].context.span_id
        assert span.context.trace_id == request[0].context.trace_id
    assert claim.end_time <= turn.start_time and turn.end_time <= finish.start_time
    assert turn.name == "invoke_agent manager"
    attributes = dict(turn.attributes)
    assert attributes["gen_ai.operation.name"] == "invoke_agent"
    assert attributes["gen_ai.agent.name"] == "manager"
    assert attributes["gen_ai.conversation.id"] == row(engine, DEVICE)["session_id"]
    assert attributes["agent_sessions.turn.attempt"] == 1
    assert attributes["agent_sessions.turn.messages"] == 1
    assert attributes["agent_sessions.turn.outcome"] == "handoff"
    assert attributes["agent_sessions.device.hash"] == device_hash(settings, DEVICE)
    text = recorded.text()
    for leak in (DEVICE, DEVICE.replace("-", ""), TEXT, "7700 900123"):
        assert leak not in text


class AsyncTraced:
    """An async agent whose own work is a span made with the OpenTelemetry API."""

    def __init__(self, recorded: Recorded):
        self.tracer = recorded.tracer_provider.get_tracer("an-llm-client")

    async def handle(self, message: AgentInput) -> AgentReply:
        with self.tracer.start_as_current_span("chat fake-model"):
            await anyio.lowlevel.checkpoint()
        return AgentReply("done")


class SyncTraced(AsyncTraced):
    """The same, as a sync agent: it runs on a worker thread."""

    def handle(self, message: AgentInput) -> AgentReply:
        with self.tracer.start_as_current_span("chat fake-model"):
            seen = threading.current_thread()
        assert seen is not threading.main_thread()
        return AgentReply("done")


def test_an_agents_own_spans_nest_under_its_turn_async_or_sync(database_url, engine):
    for kind in (AsyncTraced, SyncTraced):
        with recording() as recorded:
            pipeline = pipeline_of(engine, database_url, {"manager": kind(recorded)})
            result = aio.run(pipeline.handle, Inbound("default", DEVICE, f"hello {kind.__name__}"))
            assert result.reply == "done"
            turn, model = recorded.one("invoke_agent manager"), recorded.one("chat fake-model")
            assert model.parent is not None and model.parent.span_id == turn.context.span_id, kind.__name__
            assert model.context.trace_id == turn.context.trace_id


class Stuck:
    """An async agent that never answers: only AGENT_TIMEOUT_SECONDS ends its turn."""

    async def handle(self, message: AgentInput) -> AgentReply:
        await anyio.Event().wait()
        raise AssertionError("unreachable")


def test_a_timed_out_turn_says_so(database_url, engine):
    with recording() as recorded:
        pipeline = pipeline_of(engine, database_url, {"manager": Stuck()}, agent_timeout_seconds=0.2)
        aio.run(pipeline.handle, Inbound("default", DEVICE, "hello"))
    turn = recorded.one("invoke_agent manager")
    assert turn.attributes["agent_sessions.turn.outcome"] == "timed_out"
    assert turn.attributes["error.type"] == "AgentTimeout"
    assert turn.status.status_code == StatusCode.ERROR
    assert recorded.points("agent_sessions.turns") == [({"gen_ai.agent.name": "manager", "outcome": "timed_out"}, 1)]


def test_a_message_that_waits_for_the_device_shows_the_wait(database_url, engine):
    gate = Gate(Scripted("manager"), when=lambda message: message.text == "first")
    with recording() as recorded:
        pipeline = pipeline_of(engine, database_url, {"manager": gate})
        first = threading.Thread(target=aio.run, args=(pipeline.handle, Inbound("default", DEVICE, "first")))
        first.start()
        try:
            assert gate.entered.wait(20)
            second = threading.Thread(target=aio.run, args=(pipeline.handle, Inbound("default", DEVICE, "second")))
            second.start()
            assert wait_for(lambda: recorded.points("agent_sessions.device.queued"))
        finally:
            gate.release.set()
            first.join(30)
        second.join(30)
    wait = recorded.one("agent_sessions.wait")
    assert wait.attributes["agent_sessions.wait.reason"] == "lease_held"
    assert wait.attributes["agent_sessions.wait.queued"] == 1
    assert wait.attributes["agent_sessions.wait.outcome"] == "answered"
    turns = recorded.spans("invoke_agent*")
    assert len(turns) == 2 and wait.end_time >= turns[0].end_time
    assert [dict(attributes) for attributes, _ in recorded.points("agent_sessions.wait.duration")] == [
        {"reason": "lease_held", "outcome": "answered"}
    ]


def test_a_turn_that_outlasts_a_renewal_interval_has_renewal_events(database_url, engine):
    # LEASE_SECONDS=1 (its least): the lease is renewed every third of a second while the agent waits.
    gate = Gate(Scripted("manager"))
    with recording() as recorded:
        pipeline = pipeline_of(engine, database_url, {"manager": gate}, lease_seconds=1)
        turn_thread = threading.Thread(target=aio.run, args=(pipeline.handle, Inbound("default", DEVICE, "hello")))
        turn_thread.start()
        try:
            assert gate.entered.wait(20)
            assert wait_for(lambda: recorded.points("agent_sessions.lease.renewals"))
        finally:
            gate.release.set()
            turn_thread.join(30)
    turn = recorded.one("invoke_agent manager")
    assert turn.attributes["agent_sessions.turn.outcome"] == "answered"
    renewals = [event for event in turn.events if event.name.startswith("lease ")]
    assert renewals, [event.name for event in turn.events]
    # Each renewal is a bare event: its name says the result ("lease renewed", "lease renewal lost" or
    # "lease renewal failed"); the count by result is the agent_sessions.lease.renewals metric.
    assert {(event.name, tuple(event.attributes.items())) for event in renewals} == {("lease renewed", ())}
    assert all(turn.start_time <= event.timestamp <= turn.end_time for event in renewals)
    [(attributes, count)] = recorded.points("agent_sessions.lease.renewals")
    assert attributes == {"result": "renewed"} and count == len(renewals)

"""Traces of agents' turns: a turn stopped by POST /api/chat/stop, an OpenAI Agents SDK run under its turn."""

from __future__ import annotations

import uuid

import pytest
from agents import Agent
from opentelemetry.trace import StatusCode

from app.agents.openai_agents import registry_from_agents
from app.pipeline import Inbound, Pipeline
from tests.conftest import make_settings
from tests.utils import aio
from tests.utils.apps import app_client
from tests.utils.fake_llm import FakeModel, HandTo, Say
from tests.utils.gates import gate_server
from tests.utils.sse import DONE, parts
from tests.utils.telemetry import recording

AGENTS = "tests.utils.stream_agents:registry"  # "hold <gate> <words>" streams one word, then waits on the gate
TEXT = "my card is 4111 1111 1111 1111"


@pytest.fixture
def gates(monkeypatch):
    with gate_server() as gates:
        monkeypatch.setenv("GATE_URL", gates.url)
        yield gates


def test_a_turn_stopped_by_the_person_has_the_outcome_stopped(database_url, engine, gates):
    device = str(uuid.uuid4())
    headers = {"X-Device-ID": device}
    request = {
        "id": "chat-1",
        "trigger": "submit-message",
        "messageId": None,
        "messages": [{"id": uuid.uuid4().hex, "role": "user", "parts": [{"type": "text", "text": "hold never w1 w2"}]}],
    }
    with recording() as recorded, app_client(make_settings(database_url, agents=AGENTS)) as client:
        with client.stream("POST", "/api/chat/stream", json=request, headers=headers) as response:
            items = parts(response)
            # The agent has streamed its first word and now waits on a gate nobody opens.
            assert next(item for item in items if item["type"] == "text-delta")["delta"] == "w1 "
            assert client.post("/api/chat/stop", headers=headers).json()["status"] == "stopping"
            rest = list(items)
        assert [item["data"]["status"] for item in rest if item["type"] == "data-status"] == ["stopped"]
        assert rest[-1] == DONE
    turn = recorded.one("invoke_agent manager")
    assert turn.attributes["agent_sessions.turn.outcome"] == "stopped"
    # The person asked for it: not an error of the service.
    assert turn.status.status_code != StatusCode.ERROR
    assert recorded.points("agent_sessions.turns") == [({"gen_ai.agent.name": "manager", "outcome": "stopped"}, 1)]


def test_an_openai_agents_sdk_run_nests_under_its_turn(database_url, engine):
    triage, billing = (
        FakeModel("triage", [HandTo("Billing")]),
        FakeModel("billing", [Say("What is the invoice number?")]),
    )
    manager = Agent(name="Triage", model=triage, handoffs=[Agent(name="Billing", model=billing)])
    registry = registry_from_agents(manager, tracing=False)
    with recording() as recorded:
        pipeline = Pipeline(engine, registry, make_settings(database_url, log_hash_key="k"))
        result = aio.run(pipeline.handle, Inbound("default", str(uuid.uuid4()), TEXT))
    assert result.reply == "What is the invoice number?"
    turn, run = recorded.one("invoke_agent manager"), recorded.one("openai_agents.run*")
    assert run.parent is not None and run.parent.span_id == turn.context.span_id
    assert run.context.trace_id == turn.context.trace_id
    assert turn.start_time <= run.start_time and run.end_time <= turn.end_time
    attributes = dict(run.attributes)
    assert run.name == "openai_agents.run Triage"
    assert attributes["gen_ai.agent.name"] == "Triage"
    assert attributes["agent_sessions.sdk.last_agent"] == "Billing"
    # FakeModel counts 11 tokens in and 7 out per call; the run made two calls (the handoff, the answer).
    assert attributes["agent_sessions.sdk.requests"] == 2
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (22, 14)
    assert TEXT not in repr(attributes) and "invoice" not in repr(attributes)

"""The OpenAI Agents SDK adapter streams (Runner.run_streamed) on scripted models, offline:
text deltas, tool calls and results, handoffs; through the pipeline and POST /api/chat/stream."""

from __future__ import annotations

import uuid

import httpx
import pytest
from agents import Agent

from app.agents import AgentReply, Handoff, Keep, Release, StreamEvent
from app.agents.openai_agents import RELEASE_TOOL, registry_from_agents
from app.agents.openai_example import build
from tests.conftest import make_settings
from tests.streams.test_stream_api import body, stored
from tests.utils import aio, openai_registry
from tests.utils.apps import app_client, use_registry
from tests.utils.fake_llm import FakeModel, HandTo, Say
from tests.utils.gates import gate_server
from tests.utils.sse import DONE, parts, text_of


def message(text: str, lock: str | None = None):
    from app.agents import AgentInput

    return AgentInput(text, "default", "device-1", {}, lock)


async def collect(entry, text: str, lock: str | None = None) -> list:
    return [item async for item in entry.stream(message(text, lock))]


class TestAdapterStream:
    def test_a_tool_using_handoff_run_streams_its_parts_and_ends_with_the_reply_handle_gives(self):
        """The example graph: Triage hands a bill to Billing, which looks it up and releases."""
        registry = registry_from_agents(build(openai_registry.models()), tracing=False)
        items = aio.run(collect, registry["manager"], "my bill, invoice 12345")
        deltas = [item for item in items if isinstance(item, str)]
        events = [item for item in items if isinstance(item, StreamEvent)]
        final = items[-1]
        assert isinstance(final, AgentReply) and not any(isinstance(item, AgentReply) for item in items[:-1])
        assert len(deltas) > 1 and "".join(deltas) == final.reply
        calls = [(event.name, event.input) for event in events if event.kind == "tool-call"]
        assert calls == [
            ("transfer_to_billing", {}),
            ("invoice_status", {"invoice_number": "12345"}),
            (RELEASE_TOOL, {}),
        ]
        results = [event for event in events if event.kind == "tool-result"]
        assert [event.call_id for event in results] == [event.call_id for event in events if event.kind == "tool-call"]
        assert results[0].output == {"handoff_to": "billing"}
        assert "12345" in str(results[1].output)
        assert isinstance(final.lock, Release)  # Billing called release_conversation
        assert final.tools_used == ["invoice_status", RELEASE_TOOL]
        # The same run through handle gives the same reply and effects.
        again = aio.run(
            registry_from_agents(build(openai_registry.models()), tracing=False)["manager"].handle,
            message("my bill, invoice 12345"),
        )
        assert (again.reply, again.lock, again.tools_used) == (final.reply, final.lock, final.tools_used)

    def test_a_run_that_ends_on_another_agent_hands_the_lock_over_answered(self):
        billing = Agent(name="Billing", model=FakeModel("billing", [Say("Billing here, what is it?")]))
        manager = Agent(name="Triage", model=FakeModel("triage", [HandTo("Billing")]), handoffs=[billing])
        items = aio.run(collect, registry_from_agents(manager, tracing=False, ttl=300)["manager"], "money")
        assert "".join(item for item in items if isinstance(item, str)) == "Billing here, what is it?"
        assert items[-1].lock == Handoff("billing", 300, answered=True)

    def test_a_specialist_that_hands_back_gives_the_managers_reply_as_the_managers(self):
        billing = Agent(name="Billing", model=FakeModel("billing", [HandTo("Triage")]))
        manager = Agent(name="Triage", model=FakeModel("triage", [Say("Hi, what else?")]), handoffs=[billing])
        billing.handoffs = [manager]
        items = aio.run(collect, registry_from_agents(manager, tracing=False)["billing"], "other", "billing")
        assert (items[-1].reply, items[-1].lock, items[-1].agent) == ("Hi, what else?", Release(), "manager")

    def test_a_run_on_the_lock_holder_keeps_the_lock(self):
        billing = Agent(name="Billing", model=FakeModel("billing", [Say("Still me.")]))
        registry = registry_from_agents(Agent(name="Triage", handoffs=[billing]), tracing=False)
        items = aio.run(collect, registry["billing"], "hello", "billing")
        assert items[-1].reply == "Still me." and isinstance(items[-1].lock, Keep)


@pytest.fixture
def gates(monkeypatch):
    with gate_server() as gates:
        yield gates


def test_through_the_stream_route_the_text_comes_in_deltas_equal_to_the_stored_reply(database_url, engine, gates):
    """Billing's answer is held after its first word (a gate): the rest can only come as later deltas."""

    async def hold(seen) -> None:
        if seen.model == "billing":
            async with httpx.AsyncClient(timeout=60) as client:
                (await client.get(f"{gates.url}/wait/billing")).raise_for_status()

    models = openai_registry.models()
    models["Billing"].pause = hold
    device = str(uuid.uuid4())
    with app_client(make_settings(database_url)) as client:
        use_registry(client, registry_from_agents(build(models), tracing=False))
        request = body("I have a bill, invoice 12345")
        with client.stream("POST", "/api/chat/stream", json=request, headers={"X-Device-ID": device}) as response:
            assert response.status_code == 200
            stream = parts(response)
            items = []
            for item in stream:
                items.append(item)
                if item["type"] == "text-delta":
                    break
            gates.open("billing")
            items.extend(stream)
    types = [item["type"] for item in items]
    assert types.count("text-delta") > 1 and items[-1] == DONE
    reply = stored(engine, device)[-1]
    assert reply[0] == "assistant" and text_of(items) == reply[1] and "12345" in reply[1]
    tools = [(item["toolName"], item["input"]) for item in items if item["type"] == "tool-input-available"]
    assert ("invoice_status", {"invoice_number": "12345"}) in tools
    assert types.index("tool-input-available") < types.index("tool-output-available") < types.index("text-delta")
    lock = next(item["data"] for item in items if item["type"] == "data-lock")
    assert lock["agent"] is None  # handed to Billing, which released the conversation


@pytest.mark.parametrize("route", ["/api/chat", "/api/chat/stream"])
def test_a_reply_the_manager_wrote_after_a_hand_back_is_the_managers_in_the_response_and_history(
    database_url, engine, route
):
    """Billing holds the lock and hands back to Triage, which answers: Runner.run (/api/chat) and
    Runner.run_streamed (/api/chat/stream) both store and report that answer as the manager's."""
    billing = Agent(name="Billing", model=FakeModel("billing", [Say("Which invoice?"), HandTo("Triage")]))
    manager = Agent(
        name="Triage", model=FakeModel("triage", [HandTo("Billing"), Say("Hi, what else?")]), handoffs=[billing]
    )
    billing.handoffs = [manager]
    device = str(uuid.uuid4())
    answered_by = []
    with app_client(make_settings(database_url)) as client:
        use_registry(client, registry_from_agents(manager, tracing=False))
        for text in ("my bill", "something else"):
            if route == "/api/chat":
                response = client.post(route, json={"message": text}, headers={"X-Device-ID": device})
                assert response.status_code == 200, response.text
                answered_by.append(response.json()["agent"])
            else:
                with client.stream("POST", route, json=body(text), headers={"X-Device-ID": device}) as response:
                    assert response.status_code == 200
                    items = list(parts(response))
                answered_by.append(next(item["data"] for item in items if item["type"] == "data-lock")["answered_by"])
    assert answered_by == ["billing", "manager"]
    with engine.connect() as conn:
        history = conn.exec_driver_sql(
            "SELECT content, agent FROM conversation_messages WHERE device_id = %(device)s AND role = 'assistant' "
            "ORDER BY id",
            {"device": device},
        ).all()
    assert [tuple(row) for row in history] == [("Which invoice?", "billing"), ("Hi, what else?", "manager")]

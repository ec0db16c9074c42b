"""SDK agents end to end: /api/chat in a new process per message, the WhatsApp webhook, failures, no network.

The models are scripted (tests/utils/openai_registry.py); nothing may connect beyond 127.0.0.1.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid

import httpx
import pytest
from agents import Agent, RunConfig, function_tool
from agents.models.openai_provider import OpenAIProvider
from openai import AsyncOpenAI

from app.agents import AgentInput
from app.agents.openai_agents import registry_from_agents
from app.agents.openai_example import build
from app.agents.runner import FAILURE_REPLY
from app.core.logging import request_id
from app.errors import AgentFailed
from tests.channels.conftest import wa_settings
from tests.channels.payloads import USER, change, delivery, post, rows, text
from tests.conftest import make_settings
from tests.utils import aio, openai_registry
from tests.utils.apps import app_client, use_registry
from tests.utils.fake_llm import Call, Fail, FakeModel, Say, read_log
from tests.utils.no_network import loopback_only
from tests.utils.server import app_env, running_app
from tests.utils.states import row

DEVICE = "0b6c3f4e-7d2a-4c1b-8e9f-3a5d7c9b1e20"
REGISTRY = "tests.utils.openai_registry:registry"
PAY = "I'd like to pay my bill"
INVOICE = "It's invoice 4417"
PAID = "Invoice 4417 has $132.00 due. Anything else, just ask."
SECRET_TEXT = "my card is 4111 1111 1111 1111"


def chat_over_http(server, message: str, device: str = DEVICE) -> dict:
    response = httpx.post(
        f"{server.url}/api/chat", json={"message": message}, headers={"X-Device-ID": device}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


def assistant_rows(engine) -> list[dict]:
    with engine.begin() as conn:
        return [
            dict(r)
            for r in conn.exec_driver_sql(
                "SELECT content, agent, tools_used, metadata FROM conversation_messages "
                "WHERE role = 'assistant' ORDER BY id"
            ).mappings()
        ]


class TestChatAcrossProcesses:
    def test_billing_takes_the_lock_keeps_it_in_a_new_process_and_releases_it(self, database_url, engine, tmp_path):
        log, blocked = tmp_path / "models.jsonl", tmp_path / "blocked.jsonl"
        env = app_env(
            database_url,
            agents=REGISTRY,
            fake_llm_log=log,
            fake_llm_blocked_log=blocked,
            openai_api_key="sk-offline-test-key",  # with tracing on, the exporter would try to send
        )

        with running_app(env) as server:  # 1: the manager hands off; billing answers at once
            body = chat_over_http(server, PAY)
        assert (body["reply"], body["agent"], body["lock"]["agent"]) == (
            openai_registry.ASK_INVOICE,
            "billing",
            "billing",
        )
        assert row(engine, DEVICE)["active_agent"] == "billing"
        first = read_log(log)
        assert [call.model for call in first] == ["triage", "billing"]  # billing not run a second time

        with running_app(env) as server:  # 2: a new process; only billing's model runs, and it releases
            body = chat_over_http(server, INVOICE)
        assert (body["reply"], body["agent"], body["lock"]["agent"]) == (PAID, "billing", None)
        second = read_log(log)[len(first) :]
        assert [call.model for call in second] == ["billing"] * 3
        assert second[0].pid != first[0].pid
        assert second[0].texts() == [("user", PAY), ("assistant", openai_registry.ASK_INVOICE), ("user", INVOICE)]
        assert row(engine, DEVICE)["active_agent"] is None
        replies = assistant_rows(engine)
        assert replies[1]["tools_used"] == ["invoice_status", "release_conversation"]
        assert replies[1]["metadata"]["usage"] == {
            "requests": 3,
            "input_tokens": 33,
            "output_tokens": 21,
            "total_tokens": 54,
        }

        with running_app(env) as server:  # 3: the lock is free, so the manager answers
            body = chat_over_http(server, "hello again")
        assert (body["reply"], body["agent"], body["lock"]["agent"]) == (openai_registry.GREETING, "manager", None)
        assert [call.model for call in read_log(log)[len(first) + len(second) :]] == ["triage"]
        assert not blocked.exists(), blocked.read_text()

    def test_the_guard_in_the_child_catches_traces_sent_to_openai(self, database_url, engine, tmp_path):
        """The control for the test above: with tracing on, the child tries to reach OpenAI, and is refused."""
        blocked = tmp_path / "blocked.jsonl"
        env = app_env(
            database_url,
            agents=REGISTRY,
            fake_llm_blocked_log=blocked,
            openai_agents_tracing="true",
            openai_api_key="sk-offline-test-key",
        )
        with running_app(env) as server:
            assert chat_over_http(server, "hello")["agent"] == "manager"
            # The SDK's exporter sends its batches from a thread every few seconds.
            deadline = time.monotonic() + 30
            while not blocked.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        assert "resolve 'api.openai.com'" in blocked.read_text()


class TestWhatsApp:
    def test_the_lock_moves_and_is_released_across_deliveries_on_fresh_apps(self, database_url, engine, graph):
        models = openai_registry.models()
        registry = registry_from_agents(build(models))
        script = [
            (PAY, openai_registry.ASK_INVOICE, "billing", ["triage", "billing"]),
            (INVOICE, PAID, None, ["billing"] * 3),
            ("hello", openai_registry.GREETING, None, ["triage"]),
        ]
        with loopback_only() as attempts:
            for number, (body, reply, lock, called) in enumerate(script, 1):
                before = {name: len(model.calls) for name, model in models.items()}
                # A new app and engine per delivery: what a new serverless instance sees.
                with app_client(wa_settings(database_url, graph)) as client:
                    use_registry(client, registry)
                    assert post(client, delivery([change([text(body, f"wamid.sdk{number}")])])).status_code == 200
                assert graph.sent[-1]["text"]["body"] == reply
                assert graph.sent[-1]["to"] == USER
                assert (row(engine, USER) or {}).get("active_agent") == lock
                ran = {model.name: len(model.calls) - before[name] for name, model in models.items()}
                assert ran == {name: called.count(name) for name in ("triage", "billing", "scheduling")}
        assert len(graph.sent) == 3
        assert attempts == []
        assert models["Billing"].calls[1].texts()[:2] == [("user", PAY), ("assistant", openai_registry.ASK_INVOICE)]


@pytest.fixture
def chat_app(database_url, engine):
    """The app in this process; a test picks its agents with use_registry."""
    with app_client(make_settings(database_url)) as client:
        yield client


def chat(client, message: str) -> dict:
    response = client.post("/api/chat", json={"message": message}, headers={"X-Device-ID": DEVICE})
    assert response.status_code == 200, response.text
    return response.json()


def user_row(engine) -> dict:
    [found] = [r for r in rows(engine) if r["role"] == "user"]
    return found


class TestFailures:
    def test_a_model_error_gives_the_failure_reply_and_a_failed_row_without_its_text(self, chat_app, engine, caplog):
        model = FakeModel("triage", [Fail(RuntimeError(SECRET_TEXT))])
        use_registry(chat_app, registry_from_agents(Agent(name="Triage", model=model)))
        caplog.set_level(logging.DEBUG)
        body = chat(chat_app, "hello")
        assert (body["reply"], body["agent"], body["lock"]["agent"]) == (FAILURE_REPLY, "manager", None)
        failed = user_row(engine)
        assert (failed["status"], failed["has_error"]) == ("failed", True)
        assert "RuntimeError" in failed["error_message"] and SECRET_TEXT not in failed["error_message"]
        assert "SDK run from agent manager failed: RuntimeError" in caplog.text
        assert SECRET_TEXT not in caplog.text

    def test_max_turns_ends_a_looping_run_on_the_failure_path(self, chat_app, engine):
        @function_tool
        def lookup() -> str:
            """Look something up."""
            return "nothing yet"

        model = FakeModel("triage", lambda seen: Call("lookup"))
        use_registry(chat_app, registry_from_agents(Agent(name="Triage", model=model, tools=[lookup]), max_turns=4))
        assert chat(chat_app, "loop forever")["reply"] == FAILURE_REPLY
        assert len(model.calls) == 4
        failed = user_row(engine)
        assert failed["status"] == "failed" and "MaxTurnsExceeded" in failed["error_message"]

    def test_a_failed_specialist_keeps_its_lock(self, chat_app, engine, sessions):
        models = openai_registry.models()
        models["Billing"].rule = lambda seen: Fail(TimeoutError("upstream"))
        use_registry(chat_app, registry_from_agents(build(models)))
        sessions.set_session_lock(DEVICE, "billing")
        body = chat(chat_app, INVOICE)
        assert (body["reply"], body["agent"], body["lock"]["agent"]) == (FAILURE_REPLY, "billing", "billing")
        assert models["Triage"].calls == []


class TestRequestContext:
    def test_the_tools_of_a_run_see_the_requests_id(self, chat_app):
        """The run is awaited in the request's own task, so its log lines carry the request id."""
        seen = []

        @function_tool
        def note() -> str:
            """Note the request."""
            seen.append(request_id.get())
            return "noted"

        model = FakeModel("triage", [Call("note"), Say("ok")])
        use_registry(chat_app, registry_from_agents(Agent(name="Triage", model=model, tools=[note])))
        response = chat_app.post(
            "/api/chat", json={"message": "hi"}, headers={"X-Device-ID": DEVICE, "X-Request-ID": "req-sdk-7"}
        )
        assert (response.status_code, response.json()["reply"]) == (200, "ok")
        assert seen == ["req-sdk-7"]


class TestNoNetwork:
    def test_the_guard_refuses_and_records_what_would_leave_the_machine(self):
        with loopback_only() as attempts:
            with pytest.raises(OSError):
                socket.create_connection(("192.0.2.1", 443), timeout=2)
            with pytest.raises(httpx.ConnectError):
                httpx.get("https://api.openai.com/v1/models", timeout=2)
            with socket.create_server(("127.0.0.1", 0)) as server:  # loopback still works
                socket.create_connection(server.getsockname(), timeout=2).close()
        assert attempts == ["connect 192.0.2.1:443", "resolve 'api.openai.com'"]

    def test_a_real_model_name_without_the_fake_is_refused_by_the_guard(self, monkeypatch):
        """What the scripted models stand in for: the SDK's own client, which would go out."""
        monkeypatch.setenv("OPENAI_API_KEY", "sk-offline-test-key")
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        provider = OpenAIProvider(openai_client=AsyncOpenAI(max_retries=0), use_responses=False)
        registry = registry_from_agents(
            Agent(name="Triage", model="gpt-4.1-mini"), run_config=RunConfig(model_provider=provider)
        )
        with loopback_only() as attempts, pytest.raises(AgentFailed, match="^APIConnectionError"):
            aio.run(registry["manager"].handle, AgentInput("hi", "default", str(uuid.uuid4()), {}, None))
        assert attempts and all("api.openai.com" in attempt for attempt in attempts)

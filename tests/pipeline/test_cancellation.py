"""Async agents past AGENT_TIMEOUT_SECONDS: cancelled, their pending HTTP call closed, nothing they do later stored.

The model stands-in are real: an HTTP server on 127.0.0.1 that takes the request and
never answers (tests/utils/stalled_server.py), reached with httpx.AsyncClient or with
the OpenAI client the SDK uses; and the SDK's Model interface with a call that never
returns (tests/utils/fake_llm.py: StuckModel).
"""

from __future__ import annotations

import logging
import threading

import httpx
from agents import Agent, RunConfig
from agents.models.openai_provider import OpenAIProvider
from openai import AsyncOpenAI

from app.agents import AgentInput, AgentReply, Handoff
from app.agents.openai_agents import registry_from_agents
from app.agents.runner import FAILURE_REPLY
from app.pipeline import Inbound, Pipeline
from tests.conftest import make_settings
from tests.utils import aio
from tests.utils.agents import Scripted
from tests.utils.fake_llm import StuckModel
from tests.utils.stalled_server import stalled_server
from tests.utils.states import row

DEVICE = "0b7e7f7e-3333-4c4c-9d9d-000000000001"
TIMEOUT = 1  # AGENT_TIMEOUT_SECONDS of these tests
BOUND = 30  # seconds a test waits for an event that must come long before


class HttpAgent:
    """Awaits one request to `url`; only after its answer would it hand off and patch the context."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.after = threading.Event()  # set if the code after the await ever runs

    async def handle(self, message: AgentInput) -> AgentReply:
        async with httpx.AsyncClient(timeout=BOUND * 2) as client:
            response = await client.post(f"{self.url}/v1/answer", json={"text": message.text})
        self.after.set()
        return AgentReply(
            f"late: {response.text}", lock=Handoff("scheduling"), context={"conversation_state": {"late": True}}
        )


def pipeline_with(engine, database_url, registry) -> Pipeline:
    return Pipeline(engine, registry, make_settings(database_url, agent_timeout_seconds=TIMEOUT))


def send(pipeline: Pipeline, text: str):
    return aio.run(pipeline.handle, Inbound("default", DEVICE, text))


def messages(engine) -> list:
    with engine.begin() as conn:
        return conn.exec_driver_sql(
            "SELECT role, content, status, has_error, error_message, agent FROM conversation_messages "
            "WHERE device_id = %(d)s ORDER BY id",
            {"d": DEVICE},
        ).all()


def assert_failed_turn_and_nothing_else(engine) -> None:
    """The message failed with the timeout, one failure reply, the lock and context untouched."""
    [inbound, reply] = messages(engine)
    assert (inbound.role, inbound.status, inbound.has_error) == ("user", "failed", True)
    assert f"AgentTimeout: no answer within {TIMEOUT} s" in inbound.error_message
    assert (reply.role, reply.content) == ("assistant", FAILURE_REPLY)
    state = row(engine, DEVICE)
    assert state["active_agent"] is None
    assert "late" not in state["context"].get("conversation_state", {})


class TestAsyncAgent:
    def test_a_timeout_cancels_the_agent_and_closes_its_pending_http_call(self, engine, database_url, caplog):
        caplog.set_level(logging.INFO, logger="app.pipeline")
        with stalled_server() as server:
            agent = HttpAgent(server.url)
            pipeline = pipeline_with(engine, database_url, {"manager": agent, "scheduling": Scripted("scheduling")})
            result = send(pipeline, "hello")
            assert (result.status, result.reply, result.agent, result.lock_agent) == (
                "answered",
                FAILURE_REPLY,
                "manager",
                None,
            )
            assert server.requested.is_set()  # the call was under way when the turn timed out
            assert server.closed.wait(BOUND)  # and the agent's cancellation closed its connection
            server.answer()  # an answer now reaches nobody
        # The turn's task group has ended, the agent's coroutine with it: the code after
        # its await never ran and never will.
        assert not agent.after.is_set()
        assert_failed_turn_and_nothing_else(engine)
        assert "agent turn on message 1 timed out after" in caplog.text
        [handled] = [r for r in caplog.records if r.getMessage() == "message handled"]
        assert (handled.agent, handled.outcome) == ("manager", "failed")


class TestSdkAgent:
    def test_a_timeout_cancels_the_run_and_its_pending_model_call(self, engine, database_url):
        model = StuckModel()
        registry = registry_from_agents(Agent(name="Triage", model=model), tracing=False)
        result = send(pipeline_with(engine, database_url, registry), "hello")
        assert (result.reply, result.lock_agent) == (FAILURE_REPLY, None)
        assert model.entered.is_set()
        assert model.cancelled.wait(BOUND)
        assert_failed_turn_and_nothing_else(engine)

    def test_a_timeout_closes_the_sdk_clients_pending_http_request(self, engine, database_url):
        """The SDK's own OpenAI client, on a server that never answers: the request is closed, not left behind."""
        with stalled_server() as server:
            client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sk-offline-test-key", max_retries=0)
            provider = OpenAIProvider(openai_client=client, use_responses=False)
            registry = registry_from_agents(
                Agent(name="Triage", model="local-model"), run_config=RunConfig(model_provider=provider), tracing=False
            )
            result = send(pipeline_with(engine, database_url, registry), "hello")
            assert result.reply == FAILURE_REPLY
            assert server.requests and server.requests[0].startswith(b"POST /v1/chat/completions ")
            assert server.closed.wait(BOUND)
        assert_failed_turn_and_nothing_else(engine)

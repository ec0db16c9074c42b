"""Many turns at once on one server process: they all run together, health answers meanwhile,
and past MAX_CONCURRENT_TURNS a request is refused with nothing stored."""

from __future__ import annotations

import uuid

import anyio
import httpx
import pytest

from tests.reliability.ledger_checks import check_device, stored_messages
from tests.utils import aio
from tests.utils.chat_at_once import CLIENT_SECONDS, post_all
from tests.utils.gate import gate
from tests.utils.server import app_env, running_app

pytestmark = pytest.mark.slow

SLOW_AGENTS = "tests.utils.slow_agents:registry"


def device_id(test: str, number: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"runtime/{test}/{number}"))


def test_three_hundred_slow_turns_run_at_once_and_health_answers_meanwhile(database_url, engine):
    turns = 300
    with gate() as turn_gate:
        # Each turn holds a pooled connection only for a statement: 5 connections serve 300 turns.
        env = app_env(database_url, agents=SLOW_AGENTS, db_pool_size=5, chat_wait_seconds=CLIENT_SECONDS)
        messages = {device_id("three-hundred", n): f"turn{n:03d} gate={turn_gate.port} sleep=1" for n in range(turns)}

        async def during(client: httpx.AsyncClient, responses) -> tuple[bool, int, int]:
            arrived = await anyio.to_thread.run_sync(turn_gate.wait_arrived, turns)
            # Every turn is in flight now: each agent waits at the closed gate.
            health = await client.get("/api/health")
            still_waiting = turn_gate.arrived - len(responses)
            turn_gate.open()  # then each awaits its 1 s sleep, all at once
            return arrived, health.status_code, still_waiting

        with running_app(env) as server:
            responses, (arrived, health, still_waiting) = aio.run(post_all, server.url, messages, during)
            log = server.log()

    assert arrived, f"only {turn_gate.arrived} of {turns} turns reached their agent at once"
    assert health == 200
    assert still_waiting == turns  # no turn had answered when health did
    assert sorted(r.status_code for r in responses.values()) == [200] * turns
    bodies = {device: response.json() for device, response in responses.items()}
    assert not [device for device, body in bodies.items() if body["degraded"]]
    assert all(body["reply"] == f"slow: {messages[device]} attempt=1" for device, body in bodies.items())
    stored = stored_messages(engine)
    assert len(stored) == turns
    problems = {device: check_device(rows)[0] for device, rows in stored.items()}
    assert not {device: p for device, p in problems.items() if p}
    assert "PoolTimeout" not in log and "Traceback" not in log


def test_past_max_concurrent_turns_requests_get_503_and_nothing_is_stored(database_url, engine):
    bound, sent = 5, 10
    with gate() as turn_gate:
        env = app_env(database_url, agents=SLOW_AGENTS, max_concurrent_turns=bound)
        messages = {device_id("overload", n): f"turn{n} gate={turn_gate.port}" for n in range(sent)}

        async def during(client: httpx.AsyncClient, responses) -> tuple[bool, list[int]]:
            # All ten are in flight: five hold their slot at the gate, five were refused meanwhile.
            arrived = await anyio.to_thread.run_sync(turn_gate.wait_arrived, bound)
            await responses.wait_count(sent - bound)
            early = [response.status_code for response in responses.values()]
            turn_gate.open()
            return arrived, early

        with running_app(env) as server:
            responses, (arrived, early) = aio.run(post_all, server.url, messages, during)

    assert arrived
    assert early == [503] * (sent - bound)
    assert turn_gate.arrived == bound  # a refused request never reached an agent
    answered = {device for device, r in responses.items() if r.status_code == 200}
    refused = {device for device, r in responses.items() if r.status_code == 503}
    assert len(answered) == len(refused) == bound
    for device in refused:
        response = responses[device]
        assert response.json()["error"]["code"] == "overloaded"
        assert int(response.headers["Retry-After"]) >= 1
    for device in answered:
        assert responses[device].json()["reply"] == f"slow: {messages[device]} attempt=1"
    stored = stored_messages(engine)
    assert set(stored) == answered  # nothing stored for a refused request
    with engine.begin() as conn:
        states = {row[0] for row in conn.exec_driver_sql("SELECT device_id FROM conversation_states").all()}
    assert not states & refused

"""Slow turns, crashed workers and bursts across app instances in separate processes.

Each instance is the real app under uvicorn, with agents that think for as long as
a message says (tests/utils/turn_agents.py), LEASE_SECONDS of 2, and a turn log that
counts agent runs across processes.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.utils.agents import wait_for
from tests.utils.server import app_env, running_app
from tests.utils.turn_agents import turns

pytestmark = pytest.mark.slow

AGENTS = "tests.utils.turn_agents:registry"
LEASE_SECONDS = 2


def env_for(database_url: str, log, **settings) -> dict[str, str]:
    # Bursts of hundreds of messages on one device: RATE_LIMIT_PER_DEVICE off (test_rate_limit_across_instances.py).
    values = {
        "agents": AGENTS,
        "lease_seconds": LEASE_SECONDS,
        "chat_wait_seconds": 120,
        "db_pool_size": 20,
        "rate_limit_per_device": 0,
    }
    return app_env(database_url, **(values | settings)) | {"TURN_LOG": str(log)}


def post(client: httpx.Client, server, device: str, text: str) -> httpx.Response:
    return client.post(f"{server.url}/api/chat", json={"message": text}, headers={"X-Device-ID": device})


def started(log) -> list[tuple[str, int]]:
    return [(turn["text"], turn["attempt"]) for turn in turns(log) if turn["event"] == "start"]


def exchanges(engine, device: str) -> list:
    """(inbound text, its reply) in inbound id order, and whether replies were stored in that order."""
    with engine.begin() as conn:
        return conn.exec_driver_sql(
            "SELECT m.content, r.content AS reply, r.id AS reply_id FROM conversation_messages m "
            "JOIN conversation_messages r ON r.reply_to = m.id "
            "WHERE m.device_id = %(d)s AND m.role = 'user' ORDER BY m.id",
            {"d": device},
        ).all()


def held_transactions(engine) -> int:
    """The app's sessions holding a transaction between statements, or waiting on a row lock one holds.

    Short autocommit statements (the waiters' polls, the holder's renewals) are
    'active' while they run and are not counted.
    """
    with engine.connect() as conn:
        return conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'agent-sessions' "
            "AND datname = current_database() "
            "AND pid <> pg_backend_pid() AND (state LIKE 'idle in%%' OR wait_event_type = 'Lock')"
        ).scalar()


def assert_in_order(rows) -> None:
    """Replies stored in inbound order, each agent having seen the previous message (history and context)."""
    assert [row.reply_id for row in rows] == sorted(row.reply_id for row in rows), "a reply was stored out of order"
    for previous, current in zip(rows, rows[1:], strict=False):
        assert f"| after={previous.content} | ctx={previous.content}" in current.reply, (previous, current)


def test_a_slow_turn_keeps_its_lease_and_runs_once_while_the_next_message_waits_elsewhere(
    database_url, engine, tmp_path
):
    log = tmp_path / "turns.log"
    device = str(uuid.uuid4())
    slow = f"slow {3 * LEASE_SECONDS} first"
    env = env_for(database_url, log)
    with running_app(env) as one, running_app(env) as two, httpx.Client(timeout=120) as client:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, client, one, device, slow)
            assert wait_for(lambda: started(log) == [(slow, 1)], 30)
            second = pool.submit(post, client, two, device, "second")
            samples = []
            while not any(turn["event"] == "end" for turn in turns(log)):
                samples.append(held_transactions(engine))
                time.sleep(0.2)
            answers = [first.result().json(), second.result().json()]
    assert started(log) == [(slow, 1), ("second", 1)]  # three leases long, run once
    assert [answer["reply"].split(" | ")[0] for answer in answers] == [f"manager: {slow}", "manager: second"]
    assert_in_order(exchanges(engine, device))
    assert len(samples) >= 10 and max(samples) == 0  # renewals hold no transaction open


def test_a_killed_workers_message_runs_again_once_with_attempt_two(database_url, engine, tmp_path):
    log = tmp_path / "turns.log"
    device = str(uuid.uuid4())
    env = env_for(database_url, log)
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(1) as pool:
        with running_app(env) as doomed:
            lost = pool.submit(post, client, doomed, device, "slow 60 doomed")
            assert wait_for(lambda: started(log) == [("slow 60 doomed", 1)], 30)
            doomed.process.kill()  # SIGKILL mid-turn: no renewals from here on
            with pytest.raises(httpx.HTTPError):
                lost.result()
        with running_app(env) as survivor:
            answer = post(client, survivor, device, "after").json()
    assert started(log) == [("slow 60 doomed", 1), ("slow 60 doomed", 2), ("after", 1)]
    assert answer["reply"] == "manager: after | after=slow 60 doomed | ctx=slow 60 doomed"
    rows = exchanges(engine, device)
    assert [row.content for row in rows] == ["slow 60 doomed", "after"]
    assert_in_order(rows)


def burst(client: httpx.Client, servers, device: str, texts: list[str]) -> list[httpx.Response]:
    """Send texts at the same moment, spread over the servers."""
    gate = threading.Barrier(len(texts))

    def one(index: int) -> httpx.Response:
        gate.wait(10)
        return post(client, servers[index % len(servers)], device, texts[index])

    with ThreadPoolExecutor(len(texts)) as pool:
        return list(pool.map(one, range(len(texts))))


def test_bursts_over_two_instances_are_answered_in_stored_order(database_url, engine, tmp_path):
    device = str(uuid.uuid4())
    env = env_for(database_url, tmp_path / "turns.log")
    with running_app(env) as one, running_app(env) as two, httpx.Client(timeout=120) as client:
        for round_ in range(40):
            responses = burst(client, [one, two], device, [f"b{round_}m{i}" for i in range(6)])
            assert [response.status_code for response in responses] == [200] * 6
    rows = exchanges(engine, device)
    assert len(rows) == 240
    assert_in_order(rows)


def test_sixteen_simultaneous_messages_on_one_instance_are_answered_in_stored_order(database_url, engine, tmp_path):
    device = str(uuid.uuid4())
    env = env_for(database_url, tmp_path / "turns.log")
    with running_app(env) as one, httpx.Client(timeout=120) as client:
        responses = burst(client, [one], device, [f"m{i}" for i in range(16)])
    assert [response.status_code for response in responses] == [200] * 16
    rows = exchanges(engine, device)
    assert len(rows) == 16
    assert_in_order(rows)

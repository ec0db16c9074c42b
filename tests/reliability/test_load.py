"""Load and ordering: 2,000 chat messages from 32 concurrent clients to the real app under uvicorn.

46 devices each have one client that sends their 40 messages one after the other
(interleaved with the client's other device); 4 more devices get rounds of 8
messages sent at the same moment. The database must then hold every message once,
each device's messages in the order they were sent (or, for simultaneous ones, in
the order they were stored) with one reply each, and every lock as the device's
messages imply.
"""

from __future__ import annotations

import random
import uuid

import pytest

from tests.reliability.ledger_checks import (
    check_device,
    counts,
    duplicated_contents,
    live_locks,
    stored_messages,
)
from tests.utils.load import Call, Load, together
from tests.utils.load_agents import expected_agent, expected_lock
from tests.utils.server import app_env, running_app

pytestmark = pytest.mark.slow

SEQUENTIAL_DEVICES = 46
MESSAGES_PER_DEVICE = 40
SEQUENTIAL_CLIENTS = 24
BURST_DEVICES = 4
BURST_ROUNDS_PER_DEVICE = 5
BURST_WIDTH = 8  # 24 + 8 = 32 clients; 46 * 40 + 4 * 5 * 8 = 2,000 messages
COMMANDS = ("lock", "unlock", "say", "say")


def device_id(kind: str, number: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"load/{kind}/{number}"))


def chat(device: str, text: str) -> Call:
    return Call("POST", "/api/chat", {"X-Device-ID": device}, json={"message": text}, tag=(device, text))


def sequential_scripts(rng: random.Random) -> tuple[list[list[Call]], dict[str, list[str]]]:
    """Each client's calls (its devices' messages interleaved) and each device's texts in send order."""
    sent: dict[str, list[str]] = {}
    for number in range(SEQUENTIAL_DEVICES):
        sent[device_id("seq", number)] = [
            f"seq{number:02d} m{index:03d} {rng.choice(COMMANDS)}" for index in range(MESSAGES_PER_DEVICE)
        ]
    devices = list(sent)
    scripts = []
    for client in range(SEQUENTIAL_CLIENTS):
        mine = devices[client::SEQUENTIAL_CLIENTS]
        scripts.append([chat(device, sent[device][index]) for index in range(MESSAGES_PER_DEVICE) for device in mine])
    return scripts, sent


def burst_rounds(rng: random.Random) -> list[list[Call]]:
    rounds = []
    for number in range(BURST_DEVICES * BURST_ROUNDS_PER_DEVICE):
        device_number = number % BURST_DEVICES
        device = device_id("burst", device_number)
        texts = [f"burst{device_number} r{number:02d} s{slot} {rng.choice(COMMANDS)}" for slot in range(BURST_WIDTH)]
        rounds.append([chat(device, text) for text in texts])
    return rounds


def test_two_thousand_messages_are_stored_once_answered_in_order_and_locks_end_right(database_url, engine):
    rng = random.Random(20260101)
    scripts, sent = sequential_scripts(rng)
    rounds = burst_rounds(rng)
    total = sum(map(len, scripts)) + sum(map(len, rounds))
    assert total == 2000

    # The agents answer at once, so a 5 s lease is ample; it also bounds how long a message can wait
    # behind a lease nobody works on (test_lease_race.py) to 5 s instead of the default 30.
    # The load drives far more than a minute's RATE_LIMIT_PER_DEVICE through each device: limits off.
    env = app_env(
        database_url,
        db_pool_size=10,
        chat_wait_seconds=60,
        lease_seconds=5,
        agents="tests.utils.load_agents:registry",
        rate_limit_per_device=0,
    )
    with running_app(env) as server:
        load = Load(server.url, timeout=90, deadline_seconds=150)
        sequential, bursts = together(lambda: load.sequences(scripts), lambda: load.bursts(rounds))
        log = server.log()

    outcomes = [o for script in sequential for o in script] + [o for r in bursts for o in r]
    assert len(outcomes) == total
    statuses = counts(outcomes)
    assert statuses[None] == 0, [o.error for o in outcomes if o.status is None][:5]
    assert all(status in (200, 202) for status in statuses), statuses  # no 5xx, no 4xx
    # A 202 (queued) message must still be answered later: check_device below finds every message done.
    answered = [o for o in outcomes if o.status == 200]
    assert not [o.body for o in answered if o.body["degraded"]]
    assert not [o.call.tag for o in answered if o.call.tag[1] not in o.body["reply"]]
    assert "Traceback" not in log

    # What each sequential client saw: the agent and the lock after each of its messages.
    for device, texts in sent.items():
        lock = None
        replies = {o.call.tag[1]: o.body for o in answered if o.call.tag[0] == device}
        for text in texts:
            agent, lock = expected_agent(lock, text), expected_lock(lock, text)
            if text in replies:
                assert (replies[text]["agent"], replies[text]["lock"]["agent"]) == (agent, lock), text

    # What the database holds.
    assert duplicated_contents(engine) == {}
    stored = stored_messages(engine)
    stored_texts = {row.content for rows in stored.values() for row in rows}
    expected_texts = {o.call.tag[1] for o in outcomes}
    assert stored_texts == expected_texts and sum(map(len, stored.values())) == total
    locks = live_locks(engine)
    burst_devices = {call.tag[0] for r in rounds for call in r}
    problems = {}
    for device, rows in stored.items():
        found, final_lock = check_device(rows, order=sent.get(device))
        if final_lock != locks.get(device):
            found.append(f"lock is {locks.get(device)}, its messages imply {final_lock}")
        if found:
            problems[device] = found[:3]
    assert problems == {}
    assert set(stored) == set(sent) | burst_devices

"""Stop requests by LISTEN/NOTIFY (app/streams/signals.py): no polling while the listener listens,
and a stop asked while it is away is still seen."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from app.streams.signals import parse
from tests.conftest import make_settings
from tests.streams.test_stream_api import AGENTS, body
from tests.utils.agents import wait_for
from tests.utils.apps import app_client
from tests.utils.counting import count_statements, work
from tests.utils.sse import DONE, parts

CHECKS = "stop_message_id = ANY(%(ids)s::bigint[]), false) AS stop"
LISTENERS = "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN agent_sessions_%'"


@pytest.fixture
def client(database_url, engine, gates):
    with app_client(make_settings(database_url, agents=AGENTS)) as client:
        assert wait_for(lambda: client.services.runtime.streams.listening, 20), "the listener never connected"
        yield client


def held_turn(client, device: str, text: str) -> tuple[threading.Thread, dict]:
    """POST /api/chat with a "hold" message in a thread; the result lands in the returned dict."""
    result: dict = {}

    def post() -> None:
        response = client.post("/api/chat", json={"message": text}, headers={"X-Device-ID": device})
        result["response"] = response

    thread = threading.Thread(target=post)
    thread.start()
    return thread, result


def draft_text(conninfo: str, device: str) -> str | None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT text FROM conversation_drafts WHERE device_id = %s", [device]).fetchone()
    return row[0] if row else None


def conninfo_of(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def test_a_turn_never_stopped_looks_at_no_stop_flag(client, gates, database_url):
    device = str(uuid.uuid4())
    with count_statements(client.services.database.engine) as statements:
        thread, result = held_turn(client, device, "hold quiet w1 w2")
        assert wait_for(lambda: draft_text(conninfo_of(database_url), device) == "w1 "), "the first word never came"
        # The turn then sends nothing for 1.5 s: without the listener, three CHECKs at 0.5 s apart.
        held_since = time.monotonic()
        assert not wait_for(lambda: result, 1.5)  # still held (a bound on the scenario, not a synchronisation)
        gates.open("quiet")
        thread.join(30)
    assert time.monotonic() - held_since >= 1.5
    assert (result["response"].json()["reply"], result["response"].json()["stopped"]) == ("w1 w2", False)
    assert [s for s in work(statements) if CHECKS in s] == []


def test_a_stop_reaches_a_quiet_turn_by_its_notification(client, gates, database_url):
    device = str(uuid.uuid4())
    headers = {"X-Device-ID": device}
    with client.stream("POST", "/api/chat/stream", json=body("hold never w1 w2"), headers=headers) as r:
        items = parts(r)
        assert next(item for item in items if item["type"] == "text-delta")["delta"] == "w1 "
        # Written: from now on the turn writes nothing, so only a look at the stop flag can see the stop.
        assert wait_for(lambda: draft_text(conninfo_of(database_url), device) == "w1 ")
        with count_statements(client.services.database.engine) as statements:
            assert client.post("/api/chat/stop", headers=headers).json()["status"] == "stopping"
            rest = list(items)
    assert [item["data"]["status"] for item in rest if item["type"] == "data-status"] == ["stopped"]
    assert rest[-1] == DONE
    assert len([s for s in work(statements) if CHECKS in s]) == 1  # the poke's one look, no polling


def test_a_stop_asked_while_the_listener_is_away_is_still_seen(client, gates, database_url):
    device = str(uuid.uuid4())
    headers = {"X-Device-ID": device}
    streams = client.services.runtime.streams
    with client.stream("POST", "/api/chat/stream", json=body("hold never w1 w2"), headers=headers) as r:
        items = parts(r)
        assert next(item for item in items if item["type"] == "text-delta")["delta"] == "w1 "
        with psycopg.connect(conninfo_of(database_url), autocommit=True) as admin:
            (pid,) = admin.execute(LISTENERS).fetchone()
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
            # Asked while the listener is gone or reconnecting: its notification reaches nobody.
            assert client.post("/api/chat/stop", headers=headers).json()["status"] == "stopping"
            rest = list(items)  # seen by the writers' polling, or by the check after the reconnect
            assert wait_for(lambda: streams.listening and admin.execute(LISTENERS).fetchone() not in (None, (pid,)))
    assert [item["data"]["status"] for item in rest if item["type"] == "data-status"] == ["stopped"]


@pytest.mark.parametrize(
    "payload", ["", "not json", "[]", '["only-one"]', '["a", 2]', '{"tenant": "a"}', '["a", "b", "c"]']
)
def test_a_notification_not_naming_a_device_is_ignored(payload):
    assert parse(payload) is None


def test_a_notification_names_tenant_and_device():
    assert parse('["default", "6d1e2f3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a"]') == (
        "default",
        "6d1e2f3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a",
    )


def test_a_waiter_on_another_instance_is_woken_by_the_finish_notification(database_url, engine, gates):
    device = str(uuid.uuid4())
    settings = make_settings(database_url, agents=AGENTS)
    with app_client(settings) as a, app_client(settings) as b:
        assert wait_for(lambda: a.services.runtime.streams.listening and b.services.runtime.streams.listening)
        woken: list[tuple[str, str]] = []
        wake = b.services.runtime.wakeups.notify
        b.services.runtime.wakeups.notify = lambda key: (woken.append(key), wake(key))  # type: ignore[method-assign]
        first, first_result = held_turn(a, device, "hold finish w1 w2")
        assert wait_for(lambda: draft_text(conninfo_of(database_url), device) == "w1 "), "A's turn never started"
        second, second_result = held_turn(b, device, "and then")
        assert wait_for(lambda: len(b.services.runtime.wakeups) == 1), "B's message never waited"
        gates.open("finish")  # A answers its message, then B's (the device's next), and notifies
        first.join(30)
        second.join(30)
        # B ran no turn of the device: only A's finish, through B's listener, can wake its waiters.
        assert wait_for(lambda: woken == [("default", device)]), woken
    assert first_result["response"].json()["reply"] == "w1 w2"
    assert second_result["response"].json()["reply"] == "and then"


def test_a_json_turn_stopped_mid_reply_says_so(client, gates, database_url):
    device = str(uuid.uuid4())
    thread, result = held_turn(client, device, "hold never w1 w2")
    assert wait_for(lambda: draft_text(conninfo_of(database_url), device) == "w1 "), "the first word never came"
    assert client.post("/api/chat/stop", headers={"X-Device-ID": device}).json()["status"] == "stopping"
    thread.join(30)
    body = result["response"].json()
    assert (body["reply"], body["stopped"]) == ("w1 ", True)

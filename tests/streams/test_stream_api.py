"""POST /api/chat/stream, resume and stop in one process (the real app and database, streaming agents)."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from app.ledger import Ledger
from app.main import create_app
from app.services import build_services
from tests.conftest import make_settings
from tests.utils import aio
from tests.utils.agents import wait_for
from tests.utils.apps import app_client
from tests.utils.counting import count_statements, work
from tests.utils.factories import scalar
from tests.utils.sse import DONE, parts, text_of

AGENTS = "tests.utils.stream_agents:registry"


@pytest.fixture
def client(database_url, engine, gates):
    with app_client(make_settings(database_url, agents=AGENTS)) as client:
        yield client


def body(text: str, message_id: str | None = None) -> dict:
    """DefaultChatTransport's request body for one new user message."""
    return {
        "id": "chat-1",
        "trigger": "submit-message",
        "messageId": None,
        "messages": [
            {"id": "old-1", "role": "user", "parts": [{"type": "text", "text": "an earlier message"}]},
            {"id": "old-2", "role": "assistant", "parts": [{"type": "text", "text": "an earlier reply"}]},
            {"id": message_id or uuid.uuid4().hex, "role": "user", "parts": [{"type": "text", "text": text}]},
        ],
    }


def stream(client, text: str, device: str, **kwargs) -> list[dict]:
    with client.stream("POST", "/api/chat/stream", json=body(text, **kwargs), headers={"X-Device-ID": device}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["x-vercel-ai-ui-message-stream"] == "v1"
        assert r.headers["content-type"].startswith("text/event-stream")
        return list(parts(r))


def stored(engine, device: str) -> list[tuple]:
    return [
        tuple(row)
        for row in scalar_rows(
            engine,
            "SELECT role, content, COALESCE((metadata->>'stopped')::boolean, false) FROM conversation_messages "
            "WHERE device_id = %(device)s ORDER BY id",
            device=device,
        )
    ]


def scalar_rows(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.exec_driver_sql(sql, params).all()


class TestStream:
    def test_streams_the_reply_in_protocol_order_and_stores_only_the_last_message(self, client, engine):
        device = str(uuid.uuid4())
        items = stream(client, "drip 5 5", device)
        types = [item["type"] for item in items]
        assert types[0] == "start" and types[1] == "text-start"
        assert types[-3:] == ["data-lock", "finish", "[DONE]"]
        assert types.count("text-start") == types.count("text-end") == 1
        assert text_of(items) == "d0 d1 d2 d3 d4 "
        message_id = scalar(engine, "SELECT id FROM conversation_messages WHERE role = 'user'")
        assert items[0]["messageId"] == f"reply-{message_id}"
        # The earlier messages of the body are the client's copy: not stored again.
        assert stored(engine, device) == [("user", "drip 5 5", False), ("assistant", "d0 d1 d2 d3 d4 ", False)]
        assert scalar(engine, "SELECT count(*) FROM conversation_drafts") == 0  # drafts end with their turn

    def test_tool_events_come_as_tool_parts_before_the_text(self, client):
        items = stream(client, "tool needle", str(uuid.uuid4()))
        types = [item["type"] for item in items]
        assert types.index("tool-input-available") < types.index("tool-output-available") < types.index("text-delta")
        call = items[types.index("tool-input-available")]
        assert (call["toolName"], call["input"]) == ("lookup", {"q": "needle"})
        assert text_of(items) == "needle"

    def test_the_same_ui_message_id_is_answered_once(self, client, engine):
        device = str(uuid.uuid4())
        first = stream(client, "echo this", device, message_id="m-1")
        again = stream(client, "echo this", device, message_id="m-1")
        assert text_of(first) == text_of(again) == "echo this"
        assert scalar(engine, "SELECT count(*) FROM conversation_messages WHERE role = 'user'") == 1

    def test_a_last_message_that_is_not_the_users_is_refused(self, client, engine):
        request = body("x")
        request["messages"] = request["messages"][:2]
        response = client.post("/api/chat/stream", json=request, headers={"X-Device-ID": str(uuid.uuid4())})
        assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_message")
        assert scalar(engine, "SELECT count(*) FROM conversation_messages") == 0

    def test_resume_with_nothing_in_flight_is_204(self, client):
        response = client.get("/api/chat/stream/chat-1/stream", headers={"X-Device-ID": str(uuid.uuid4())})
        assert response.status_code == 204

    def test_statements_per_streamed_reply_are_claim_finish_and_one_per_flush_interval(self, client, engine):
        device = str(uuid.uuid4())
        with count_statements(client.services.database.engine) as statements:
            started = time.monotonic()
            items = stream(client, "drip 30 10", device)
            elapsed = time.monotonic() - started
        assert text_of(items) == "".join(f"d{i} " for i in range(30))
        ours = [s for s in work(statements) if "substr(d.text" not in s]  # READ: the reader's, not the turn's
        claims = [s for s in ours if "INSERT INTO conversation_states" in s]
        finishes = [s for s in ours if "DELETE FROM conversation_drafts" in s]
        appends = [s for s in ours if "INSERT INTO conversation_drafts" in s or "stop_message_id = ANY" in s]
        assert (len(claims), len(finishes)) == (1, 1)
        assert len(ours) == 2 + len(appends)
        assert 1 <= len(appends) <= elapsed / 0.1 + 1  # STREAM_FLUSH_MS=100: at most one per interval


class TestStop:
    def test_stop_with_nothing_running_says_so(self, client):
        response = client.post("/api/chat/stop", headers={"X-Device-ID": str(uuid.uuid4())})
        assert response.status_code == 200
        assert response.json()["status"] == "idle" and response.json()["stopping"] is False

    def test_stopping_twice_says_it_was_asked_already(self, client, database_url):
        device = str(uuid.uuid4())
        ledger = Ledger(client.services.database.engine, lease_seconds=30, default_ttl=60, context_cap=20)
        claim = aio.run(ledger.claim, "default", device, "hold g a b", external_id=None, metadata={})
        assert claim.lease is not None  # a turn in flight (its worker is this test: it never runs)
        first = client.post("/api/chat/stop", headers={"X-Device-ID": device}).json()
        second = client.post("/api/chat/stop", headers={"X-Device-ID": device}).json()
        assert (first["status"], first["message_id"]) == ("stopping", claim.message_id)
        assert (second["status"], second["message_id"]) == ("already_stopping", claim.message_id)

    def test_a_stopped_turn_keeps_its_partial_reply_marked_stopped(self, client, engine, gates):
        device = str(uuid.uuid4())
        headers = {"X-Device-ID": device}
        with client.stream("POST", "/api/chat/stream", json=body("hold never w1 w2 w3"), headers=headers) as r:
            items = parts(r)
            first = next(item for item in items if item["type"] == "text-delta")
            assert first["delta"] == "w1 "
            assert client.post("/api/chat/stop", headers=headers).json()["status"] == "stopping"
            rest = list(items)
        statuses = [item["data"]["status"] for item in rest if item["type"] == "data-status"]
        assert statuses == ["stopped"] and rest[-1] == DONE
        assert stored(engine, device) == [("user", "hold never w1 w2 w3", False), ("assistant", "w1 ", True)]
        history = client.get("/api/chat/messages", headers=headers).json()["items"]
        assert [(item["role"], item["stopped"]) for item in history] == [("assistant", True), ("user", False)]
        # The next message goes on as usual.
        assert text_of(stream(client, "next one", device)) == "next one"


def test_without_a_lifespan_the_stream_comes_as_one_valid_body(database_url, engine, gates):
    """Mangum runs the app without its lifespan (no task may outlive a request): one body, still the protocol."""
    services = build_services(make_settings(database_url, agents=AGENTS))
    client = TestClient(create_app(services=services))  # not entered: no lifespan
    try:
        response = client.post("/api/chat/stream", json=body("drip 3 1"), headers={"X-Device-ID": str(uuid.uuid4())})
        assert response.status_code == 200
        assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
        items = list(parts(response))
        assert [item["type"] for item in items][:2] == ["start", "text-start"]
        assert text_of(items) == "d0 d1 d2 " and items[-1] == DONE
    finally:
        services.database.dispose()


def test_a_takeover_stops_the_streamed_turn_in_flight_and_a_release_answers_its_message_at_once(
    database_url, engine, gates
):
    # The finish drops the reply of a turn taken over while it ran: without a stop the agent went on
    # (here: waiting on a gate nobody opens) and its text kept streaming under the person's lock.
    admin = {"Authorization": "Bearer takeover-stops-the-stream-key-1b7f"}
    settings = make_settings(
        database_url, agents=AGENTS, admin_api_keys="default:takeover-stops-the-stream-key-1b7f", lease_seconds=600
    )
    device = str(uuid.uuid4())
    headers = {"X-Device-ID": device}
    with app_client(settings) as client, ThreadPoolExecutor(1) as pool:
        with client.stream("POST", "/api/chat/stream", json=body("hold never w1 w2 w3"), headers=headers) as r:
            items = parts(r)
            assert next(item for item in items if item["type"] == "text-delta")["delta"] == "w1 "
            took = client.post(f"/api/sessions/{device}/takeover", json={"operator": "Ana"}, headers=admin)
            assert (took.status_code, took.json()["held"]) == (200, 1)
            # Bounded well under the gate's own wait (60 s), after which the agent would end by itself.
            rest = pool.submit(list, items).result(timeout=30)
        statuses = [item["data"]["status"] for item in rest if item["type"] == "data-status"]
        assert statuses == ["held"] and rest[-1] == DONE and text_of(rest) == ""
        assert stored(engine, device) == [("user", "hold never w1 w2 w3", False)]
        assert scalar(engine, "SELECT status FROM conversation_messages WHERE device_id = %(d)s", d=device) == "held"
        # Handed back with answer_held: the bot answers the message in full (the stop was for the turn taken
        # over), now, not once the stopped turn's lease (600 s here) has lapsed.
        gates.open("never")
        released = client.request(
            "DELETE", f"/api/sessions/{device}/takeover", json={"answer_held": True}, headers=admin
        )
        assert released.status_code == 200, released.text
        assert wait_for(lambda: stored(engine, device)[-1][0] == "assistant", 30), stored(engine, device)
    assert stored(engine, device)[-1] == ("assistant", "w1 w2 w3", False)

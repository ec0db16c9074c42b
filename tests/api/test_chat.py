"""POST /api/chat over HTTP, with the real app and database."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from tests.conftest import make_settings, subprocess_env
from tests.utils.apps import app_client
from tests.utils.proxy import outage_proxy
from tests.utils.states import row

DEVICE = "6a1f0c52-8e3b-4d1e-9a57-0c9a2f1b7d11"
CONVERSATION = [
    ("hi there", "manager", None),
    ("I'd like to book an appointment", "scheduling", "scheduling"),
    ("next thursday", "scheduling", "scheduling"),
    ("whenever", "scheduling", "scheduling"),  # not a time: asked again
    ("3pm", "scheduling", "scheduling"),
    ("yes", "scheduling", None),
]


@pytest.fixture
def client(settings, engine):
    with app_client(settings) as client:
        yield client


def chat(client, message, device=DEVICE, **headers):
    return client.post("/api/chat", json={"message": message}, headers={"X-Device-ID": device, **headers})


class TestConversation:
    def test_every_message_on_a_fresh_app_keeps_the_conversation(self, database_url, engine):
        replies = []
        for text, agent, lock in CONVERSATION:
            # A new app and engine per message: what a new serverless instance sees.
            with app_client(make_settings(database_url)) as client:
                response = chat(client, text)
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["agent"], body["lock"]["agent"], body["degraded"]) == (agent, lock, False)
            assert (body["lock"]["expires_at"] is None) == (lock is None)
            replies.append(body["reply"])
        assert "What day" in replies[1]
        assert replies[3] == replies[2]  # an unreadable time gets the same question again
        assert "confirm" in replies[4]
        assert "thursday at 15:00" in replies[5]
        assert row(engine, DEVICE)["active_agent"] is None

    def test_every_message_in_a_new_process(self, database_url, engine):
        script = (
            "import json, sys\n"
            "from fastapi.testclient import TestClient\n"
            "from app.main import create_app\n"
            "client = TestClient(create_app())\n"
            "r = client.post('/api/chat', json={'message': sys.argv[1]}, headers={'X-Device-ID': sys.argv[2]})\n"
            "print(json.dumps([r.status_code, r.json()]))\n"
        )
        env = subprocess_env(database_url)
        for text, agent, lock in CONVERSATION:
            done = subprocess.run(
                [sys.executable, "-c", script, text, DEVICE], env=env, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stderr
            status, body = json.loads(done.stdout.strip().splitlines()[-1])
            assert (status, body["agent"], body["lock"]["agent"]) == (200, agent, lock)

    def test_cancel_releases_at_any_step(self, client, engine):
        chat(client, "schedule something")
        body = chat(client, "tomorrow").json()
        assert body["lock"]["agent"] == "scheduling"
        body = chat(client, "actually cancel").json()
        assert (body["agent"], body["lock"]["agent"]) == ("scheduling", None)
        assert chat(client, "hello").json()["agent"] == "manager"

    def test_billing_flow_releases_at_the_end(self, client):
        bodies = [chat(client, text).json() for text in ("question about my invoice", "INV-4821", "no")]
        assert [b["agent"] for b in bodies] == ["billing"] * 3
        assert [b["lock"]["agent"] for b in bodies] == ["billing", "billing", None]
        assert "4821" in bodies[1]["reply"]

    def test_device_id_is_canonicalised(self, client, engine):
        chat(client, "book", device=DEVICE.upper())
        assert row(engine, DEVICE)["active_agent"] == "scheduling"

    def test_tenant_header_separates_conversations(self, database_url, engine):
        with app_client(make_settings(database_url, web_tenants="default,acme")) as client:
            chat(client, "book", **{"X-Tenant-ID": "acme"})
            assert chat(client, "hello").json()["agent"] == "manager"
            assert chat(client, "monday", **{"X-Tenant-ID": "acme"}).json()["agent"] == "scheduling"


class TestIdempotency:
    def test_retry_with_same_key_returns_first_reply_and_acts_once(self, client, engine):
        first = chat(client, "book an appointment", **{"Idempotency-Key": "abc-1"})
        version = row(engine, DEVICE)["version"]
        second = chat(client, "book an appointment", **{"Idempotency-Key": "abc-1"})
        assert second.status_code == 200
        assert second.json()["reply"] == first.json()["reply"]
        assert row(engine, DEVICE)["version"] == version
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM conversation_messages").scalar() == 2

    def test_same_key_with_another_body_is_422_and_changes_nothing(self, client, engine):
        first = chat(client, "book an appointment", **{"Idempotency-Key": "abc-2"})
        version = row(engine, DEVICE)["version"]
        reused = chat(client, "pay my bill", **{"Idempotency-Key": "abc-2"})
        assert reused.status_code == 422
        assert reused.json()["error"]["code"] == "idempotency_key_reused"
        assert row(engine, DEVICE)["version"] == version
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM conversation_messages").scalar() == 2
        again = chat(client, "book an appointment", **{"Idempotency-Key": "abc-2"})
        assert again.json()["reply"] == first.json()["reply"]

    def test_same_key_on_another_device_is_independent(self, client, engine):
        chat(client, "hello", **{"Idempotency-Key": "k"})
        other = str(uuid.uuid4())
        chat(client, "hello", device=other, **{"Idempotency-Key": "k"})
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM conversation_messages").scalar() == 4


class TestBadInput:
    @pytest.mark.parametrize(
        ("headers", "code"),
        [
            ({}, "missing_device_id"),
            ({"X-Device-ID": ""}, "missing_device_id"),
            ({"X-Device-ID": "not-a-uuid"}, "invalid_device_id"),
            ({"X-Device-ID": "' OR 1=1 --"}, "invalid_device_id"),
            ({"X-Device-ID": DEVICE, "X-Tenant-ID": "has space"}, "invalid_tenant_id"),
            ({"X-Device-ID": DEVICE, "X-Tenant-ID": "x" * 129}, "invalid_tenant_id"),
            ({"X-Device-ID": DEVICE, "Idempotency-Key": "k" * 256}, "invalid_idempotency_key"),
        ],
    )
    def test_bad_headers_are_400(self, client, engine, headers, code):
        response = client.post("/api/chat", json={"message": "hi"}, headers=headers)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == code
        assert_nothing_stored(engine)

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"message": ""},
            {"message": "x" * 4097},
            {"message": 5},
            {"message": None},
            [],
            "hi",
            {"message": "nul \u0000 inside"},
        ],
    )
    def test_bad_body_is_422(self, client, engine, body):
        response = client.post("/api/chat", json=body, headers={"X-Device-ID": DEVICE})
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"
        assert_nothing_stored(engine)

    def test_longest_message_is_accepted(self, client):
        assert chat(client, "x" * 4096).status_code == 200

    def test_malformed_json_is_422(self, client, engine):
        response = client.post(
            "/api/chat", content=b'{"message": ', headers={"X-Device-ID": DEVICE, "Content-Type": "application/json"}
        )
        assert response.status_code == 422
        assert_nothing_stored(engine)

    def test_body_over_64_kib_is_413(self, client, engine):
        body = json.dumps({"message": "x" * (65 * 1024)}).encode()
        response = client.post(
            "/api/chat", content=body, headers={"X-Device-ID": DEVICE, "Content-Type": "application/json"}
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        assert_nothing_stored(engine)

    def test_chunked_body_over_limit_is_413(self, client, engine):
        def chunks():
            yield b'{"message": "'
            for _ in range(70):
                yield b"x" * 1024
            yield b'"}'

        response = client.post(
            "/api/chat", content=chunks(), headers={"X-Device-ID": DEVICE, "Content-Type": "application/json"}
        )
        assert response.status_code == 413
        assert_nothing_stored(engine)

    def test_errors_never_show_a_trace(self, client):
        response = client.post("/api/chat", content=b"\xff\xfe", headers={"X-Device-ID": DEVICE})
        assert response.status_code == 422
        assert "Traceback" not in response.text


def assert_nothing_stored(engine) -> None:
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM conversation_messages").scalar() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM conversation_states").scalar() == 0


class TestOutage:
    def test_degraded_during_outage_and_recovers(self, database_url, engine):
        with outage_proxy(database_url) as proxy:
            settings = make_settings(proxy.url, db_connect_timeout=2)
            with app_client(settings) as client:
                assert chat(client, "book an appointment").json()["lock"]["agent"] == "scheduling"
                proxy.down()
                response = chat(client, "monday")
                assert response.status_code == 200
                body = response.json()
                assert body["degraded"] is True
                assert body["agent"] == "manager"
                assert body["lock"] == {"agent": None, "expires_at": None}
                health = client.get("/api/health")
                assert health.status_code == 503
                assert health.json()["database"] == "unavailable"
                proxy.up()
                # Back by itself: the conversation continues where it was.
                body = chat(client, "monday").json()
                assert (body["degraded"], body["agent"], body["lock"]["agent"]) == (False, "scheduling", "scheduling")
                assert client.get("/api/health").json()["status"] == "ok"


class TestHealth:
    def test_ok_with_migration(self, client):
        from app.core.migrate import head_revision

        assert client.get("/api/health").json() == {
            "status": "ok",
            "database": "ok",
            "migration": head_revision(),
            "expected_migration": head_revision(),
            "schema": "current",
        }

    def test_unreachable(self):
        from app.core.migrate import head_revision

        settings = make_settings("postgresql+psycopg://x@127.0.0.1:1/x", db_connect_timeout=2)
        with app_client(settings) as client:
            response = client.get("/api/health")
        assert response.status_code == 503
        assert response.json() == {
            "status": "degraded",
            "database": "unavailable",
            "migration": None,
            "expected_migration": head_revision(),
            "schema": None,
        }

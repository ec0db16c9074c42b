"""Changing sessions: context patches, operator lock overrides (audited) and erasure."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.sessions.conftest import A
from tests.utils.factories import make_audit, make_exchange, make_message, make_state, scalar, snapshot
from tests.utils.states import row

DEVICE = "dev-1"


def audit_rows(engine, device=DEVICE):
    with engine.begin() as conn:
        return [
            tuple(r)
            for r in conn.exec_driver_sql(
                "SELECT event, from_agent, to_agent, session_id FROM conversation_audit "
                "WHERE device_id = %(d)s ORDER BY id",
                {"d": device},
            )
        ]


class TestContextPatch:
    def test_merges_into_the_stored_context(self, client, engine):
        make_state(
            engine,
            DEVICE,
            "acme",
            context={
                "conversation_state": {"flow": "billing", "step": "invoice"},
                "user_preferences": {"lang": "en"},
                "recent_interactions": [1, 2],
            },
        )
        response = client.patch(
            f"/api/sessions/{DEVICE}/context",
            headers=A,
            json={
                "conversation_state": {"step": None, "invoice": "4821"},
                "user_preferences": {"tz": "UTC"},
                "recent_interactions": [3],
                "interrupted_queries": ["later"],
            },
        )
        assert response.status_code == 200, response.text
        merged = {
            "conversation_state": {"flow": "billing", "invoice": "4821"},
            "user_preferences": {"lang": "en", "tz": "UTC"},
            "interrupted_queries": ["later"],
            "recent_interactions": [1, 2, 3],
        }
        assert response.json() == {"context": merged}
        assert client.get(f"/api/sessions/{DEVICE}", headers=A).json()["context"] == merged
        assert row(engine, DEVICE, "acme")["version"] == 1

    def test_lists_keep_only_the_newest_cap_items(self, database_url, engine):
        from tests.sessions.conftest import admin_settings
        from tests.utils.apps import app_client

        make_state(engine, DEVICE, "acme", context={"recent_interactions": [1, 2]})
        with app_client(admin_settings(database_url, context_list_cap=3)) as client:
            body = client.patch(f"/api/sessions/{DEVICE}/context", headers=A, json={"recent_interactions": [3, 4]})
        assert body.json()["context"]["recent_interactions"] == [2, 3, 4]

    def test_unknown_device_is_404_and_creates_nothing(self, client, engine):
        response = client.patch(f"/api/sessions/{DEVICE}/context", headers=A, json={"user_preferences": {"a": 1}})
        assert response.status_code == 404
        assert row(engine, DEVICE, "acme") is None

    @pytest.mark.parametrize(
        "patch",
        [
            {"unknown_part": {}},
            {"conversation_state": []},
            {"recent_interactions": {"a": 1}},
            {"user_preferences": "dark"},
            [],
            "x",
            {"conversation_state": {"nul": "a\u0000b"}},
            {"conversation_state": {"a\u0000": 1}},
            {"recent_interactions": ["\ud800"]},
        ],
    )
    def test_patch_not_in_the_shape_is_422_and_changes_nothing(self, client, engine, patch):
        make_state(engine, DEVICE, "acme", context={"user_preferences": {"lang": "en"}})
        before = snapshot(engine)
        # Sent as ASCII JSON, so escapes such as a lone surrogate reach the server as a client could send them.
        headers = A | {"Content-Type": "application/json"}
        response = client.patch(f"/api/sessions/{DEVICE}/context", headers=headers, content=json.dumps(patch))
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"
        assert snapshot(engine) == before

    @pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
    @pytest.mark.parametrize(
        "template",
        [
            '{"conversation_state": {"x": %s}}',
            '{"user_preferences": {"a": {"b": [1, %s]}}}',
            '{"recent_interactions": [%s]}',
            '{"interrupted_queries": [{"score": %s}]}',
        ],
    )
    def test_a_non_finite_number_is_422_and_changes_nothing(self, client, engine, number, template):
        make_state(engine, DEVICE, "acme", context={"user_preferences": {"lang": "en"}})
        before = snapshot(engine)
        headers = A | {"Content-Type": "application/json"}
        response = client.patch(f"/api/sessions/{DEVICE}/context", headers=headers, content=template % number)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "non_finite_number"
        assert snapshot(engine) == before

    def test_invalid_device_is_400(self, client):
        response = client.patch("/api/sessions/a%20b/context", headers=A, json={})
        assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_device_id")


class TestLockOverride:
    def test_set_on_a_free_device_is_audited_in_the_same_statement(self, client, engine):
        make_state(engine, DEVICE, "acme")
        response = client.put(f"/api/sessions/{DEVICE}/lock", headers=A, json={"agent": "billing", "ttl": 120})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["agent"], body["previous_agent"], body["session_ttl"], body["version"]) == (
            "billing",
            None,
            120,
            1,
        )
        state = row(engine, DEVICE, "acme")
        assert state["active_agent"] == "billing"
        assert 110 < state["remaining"] <= 120
        assert audit_rows(engine) == [("override", None, "billing", "sess_20260101_000000_aaaaaa")]

    def test_replacing_a_live_lock_names_the_displaced_agent(self, client, engine):
        make_state(engine, DEVICE, "acme", agent="scheduling", session_ttl=900)
        body = client.put(f"/api/sessions/{DEVICE}/lock", headers=A, json={"agent": "billing"}).json()
        assert (body["agent"], body["previous_agent"], body["session_ttl"]) == ("billing", "scheduling", 900)
        assert audit_rows(engine)[-1][:3] == ("override", "scheduling", "billing")

    def test_expired_lock_is_not_the_previous_agent(self, client, engine):
        make_state(engine, DEVICE, "acme", agent="scheduling", lock_seconds=-1)
        body = client.put(f"/api/sessions/{DEVICE}/lock", headers=A, json={"agent": "scheduling"}).json()
        assert body["previous_agent"] is None
        assert audit_rows(engine)[-1][:3] == ("override", None, "scheduling")

    def test_re_setting_the_holder_keeps_locked_at(self, client, engine):
        make_state(engine, DEVICE, "acme", agent="scheduling", locked_ago=300)
        locked_at = row(engine, DEVICE, "acme")["locked_at"]
        client.put(f"/api/sessions/{DEVICE}/lock", headers=A, json={"agent": "scheduling", "ttl": 60})
        assert row(engine, DEVICE, "acme")["locked_at"] == locked_at

    def test_the_next_message_goes_to_the_operators_agent(self, client, engine):
        device = str(uuid.uuid4())
        chat = {"X-Device-ID": device, "X-Tenant-ID": "acme"}
        assert client.post("/api/chat", json={"message": "hi"}, headers=chat).json()["agent"] == "manager"
        client.put(f"/api/sessions/{device}/lock", headers=A, json={"agent": "billing"})
        body = client.post("/api/chat", json={"message": "hello"}, headers=chat).json()
        assert (body["agent"], body["lock"]["agent"]) == ("billing", "billing")

    def test_release_a_live_lock(self, client, engine):
        make_state(engine, DEVICE, "acme", agent="scheduling", version=3)
        body = client.delete(f"/api/sessions/{DEVICE}/lock", headers=A).json()
        assert body == {
            "agent": None,
            "locked_at": None,
            "expires_at": None,
            "session_ttl": 86400,
            "version": 4,
            "previous_agent": "scheduling",
        }
        assert row(engine, DEVICE, "acme")["active_agent"] is None
        assert audit_rows(engine) == [("override", "scheduling", None, "sess_20260101_000000_aaaaaa")]

    def test_release_without_a_lock_changes_and_audits_nothing(self, client, engine):
        make_state(engine, DEVICE, "acme", version=2)
        before = snapshot(engine)
        body = client.delete(f"/api/sessions/{DEVICE}/lock", headers=A).json()
        assert (body["previous_agent"], body["version"]) == (None, 2)
        assert snapshot(engine) == before

    def test_release_tidies_an_expired_lock_as_expired(self, client, engine):
        make_state(engine, DEVICE, "acme", agent="billing", lock_seconds=-1)
        assert client.delete(f"/api/sessions/{DEVICE}/lock", headers=A).json()["previous_agent"] is None
        assert row(engine, DEVICE, "acme")["active_agent"] is None
        assert audit_rows(engine)[-1][:3] == ("expired", "billing", None)

    @pytest.mark.parametrize("method", ["put", "delete"])
    def test_unknown_device_is_404_and_creates_nothing(self, client, engine, method):
        kwargs = {"json": {"agent": "billing"}} if method == "put" else {}
        response = getattr(client, method)(f"/api/sessions/{DEVICE}/lock", headers=A, **kwargs)
        assert response.status_code == 404
        assert snapshot(engine)["conversation_states"] == []
        assert snapshot(engine)["conversation_audit"] == []

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            ({"agent": "Bad"}, "validation_error"),
            ({"agent": ""}, "validation_error"),
            ({"agent": "a" * 51}, "validation_error"),
            ({"agent": None}, "validation_error"),
            ({}, "validation_error"),
            ({"agent": "billing", "ttl": 0}, "validation_error"),
            ({"agent": "billing", "ttl": 2592001}, "validation_error"),
            ({"agent": "billing", "ttl": "60"}, "validation_error"),
            ({"agent": "billing", "ttl": 1.5}, "validation_error"),
            ({"agent": "billing", "ttl": True}, "validation_error"),
            ({"agent": "billing", "extra": 1}, "validation_error"),
            ({"agent": "ghost"}, "unknown_agent"),
        ],
    )
    def test_bad_body_is_422_and_changes_nothing(self, client, engine, body, code):
        make_state(engine, DEVICE, "acme", agent="scheduling")
        before = snapshot(engine)
        response = client.put(f"/api/sessions/{DEVICE}/lock", headers=A, json=body)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == code
        assert snapshot(engine) == before

    def test_longest_ttl_is_accepted(self, client, engine):
        make_state(engine, DEVICE, "acme")
        body = client.put(f"/api/sessions/{DEVICE}/lock", headers=A, json={"agent": "billing", "ttl": 2592000})
        assert body.json()["session_ttl"] == 2592000


class TestErase:
    def test_erases_state_messages_audit_and_dedup_ids_of_that_device_only(self, client, engine):
        make_state(engine, DEVICE, "acme", agent="billing")
        make_exchange(engine, DEVICE, "acme")
        make_message(engine, DEVICE, "acme", external_id="wamid.1")
        make_audit(engine, DEVICE, "acme")
        make_state(engine, "keep", "acme")
        make_exchange(engine, "keep", "acme")
        make_state(engine, DEVICE, "globex")
        response = client.delete(f"/api/sessions/{DEVICE}", headers=A)
        assert response.status_code == 204
        assert response.content == b""
        for suffix in ("", "/history", "/messages", "/audit", "/export"):
            assert client.get(f"/api/sessions/{DEVICE}{suffix}", headers=A).status_code == 404
        assert scalar(engine, "SELECT count(*) FROM conversation_messages WHERE external_id = 'wamid.1'") == 0
        assert scalar(engine, "SELECT count(*) FROM conversation_audit") == 0
        assert scalar(engine, "SELECT count(*) FROM conversation_messages WHERE device_id = 'keep'") == 2
        assert row(engine, DEVICE, "globex") is not None
        assert client.delete(f"/api/sessions/{DEVICE}", headers=A).status_code == 404

    def test_device_known_only_by_messages_is_erased(self, client, engine):
        make_exchange(engine, DEVICE, "acme")
        assert client.delete(f"/api/sessions/{DEVICE}", headers=A).status_code == 204
        assert snapshot(engine)["conversation_messages"] == []

    def test_erased_idempotency_key_starts_over(self, client, engine):
        device = str(uuid.uuid4())
        chat = {"X-Device-ID": device, "X-Tenant-ID": "acme", "Idempotency-Key": "k1"}
        client.post("/api/chat", json={"message": "book an appointment"}, headers=chat)
        assert client.delete(f"/api/sessions/{device}", headers=A).status_code == 204
        body = client.post("/api/chat", json={"message": "hello"}, headers=chat).json()
        assert body["agent"] == "manager"  # answered afresh, not the stored first reply
        assert scalar(engine, "SELECT count(*) FROM conversation_messages") == 2

    def test_unknown_device_is_404(self, client):
        response = client.delete("/api/sessions/nobody", headers=A)
        assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")

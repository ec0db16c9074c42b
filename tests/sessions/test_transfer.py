"""Export and import: a self-describing document, a faithful round trip, and refusals that change nothing."""

from __future__ import annotations

import copy
import json
import uuid

import pytest

from tests.sessions.conftest import A, admin_settings
from tests.utils.apps import app_client
from tests.utils.factories import make_exchange, make_message, make_state, snapshot

DEVICE = str(uuid.uuid4())


@pytest.fixture
def scripted(database_url, engine):
    settings = admin_settings(database_url, agents="tests.sessions.agents:registry")
    with app_client(settings) as client:
        yield client


def converse(client, *texts, device=DEVICE):
    headers = {"X-Device-ID": device, "X-Tenant-ID": "acme"}
    for text in texts:
        response = client.post("/api/chat", json={"message": text}, headers=headers)
        assert response.status_code == 200, response.text


def everything(client, device=DEVICE):
    """What the admin API tells about a device, without fields that an import re-assigns."""
    state = client.get(f"/api/sessions/{device}", headers=A).json()
    messages = client.get(f"/api/sessions/{device}/messages?limit=200", headers=A).json()["items"]
    by_id = {m["id"]: m for m in messages}
    for m in messages:  # ids are re-assigned: compare links by what they point at
        target = by_id.get(m["reply_to"])
        m["reply_to"] = None if target is None else (target["role"], target["content"], target["created_at"])
        del m["id"]
    audit = client.get(f"/api/sessions/{device}/audit", headers=A).json()["items"]
    for a in audit:
        del a["id"], a["message_id"]
    history = client.get(f"/api/sessions/{device}/history", headers=A).json()
    return {"state": state, "messages": messages, "audit": audit, "history": history}


def seeded_document(client, engine) -> dict:
    make_state(engine, "dev", "acme", agent="billing", context={"user_preferences": {"lang": "en"}})
    make_exchange(engine, "dev", "acme", text="q", reply="a", agent="billing")
    return client.get("/api/sessions/dev/export", headers=A).json()


class TestExport:
    def test_document_describes_itself(self, client, engine):
        document = seeded_document(client, engine)
        assert (document["kind"], document["format_version"]) == ("agent-sessions.export", 1)
        assert (document["tenant_id"], document["device_id"]) == ("acme", "dev")
        assert document["exported_at"] is not None
        assert document["state"]["lock"]["agent"] == "billing"
        assert document["state"]["lock"]["expires_at"] > document["state"]["lock"]["locked_at"]
        assert document["state"]["context"]["user_preferences"] == {"lang": "en"}
        assert [m["role"] for m in document["messages"]] == ["user", "assistant"]
        assert document["messages"][1]["reply_to"] == document["messages"][0]["id"]

    def test_unknown_device_is_404(self, client):
        assert client.get("/api/sessions/nobody/export", headers=A).status_code == 404


class TestRoundTrip:
    def test_export_erase_import_restores_state_and_history(self, scripted, engine):
        converse(scripted, "hello", "sched a visit", "tuesday", "bill me", "done", "hello again", "sched more")
        scripted.patch(
            f"/api/sessions/{DEVICE}/context",
            headers=A,
            json={
                "user_preferences": {"lang": "pt"},
                "interrupted_queries": ["refund?"],
            },
        )
        before = everything(scripted)
        assert before["state"]["lock"]["agent"] == "scheduling"
        assert [a["event"] for a in before["audit"]] == ["set", "refresh", "handoff", "release", "set"]
        document = scripted.get(f"/api/sessions/{DEVICE}/export", headers=A).json()

        assert scripted.delete(f"/api/sessions/{DEVICE}", headers=A).status_code == 204
        assert scripted.get(f"/api/sessions/{DEVICE}", headers=A).status_code == 404
        response = scripted.post("/api/sessions/import", json=document, headers=A)
        assert response.status_code == 201, response.text
        assert response.json() == {
            "device_id": DEVICE,
            "session_id": before["state"]["session_id"],
            "messages": 14,
            "audit": 5,
            "dropped_metadata": 0,  # web messages: nothing routes them
        }

        after = everything(scripted)
        assert after == before
        # The conversation goes on under the restored lock.
        reply = scripted.post(
            "/api/chat", json={"message": "friday"}, headers={"X-Device-ID": DEVICE, "X-Tenant-ID": "acme"}
        ).json()
        assert (reply["agent"], reply["lock"]["agent"]) == ("scheduling", "scheduling")

    def test_ids_are_reassigned_in_order_and_links_follow(self, client, engine):
        document = seeded_document(client, engine)
        make_exchange(engine, "filler", "acme")  # the sequence moves on: new ids must differ
        client.delete("/api/sessions/dev", headers=A)
        client.post("/api/sessions/import", json=document, headers=A)
        again = client.get("/api/sessions/dev/export", headers=A).json()
        old_ids = [m["id"] for m in document["messages"]]
        new_ids = [m["id"] for m in again["messages"]]
        assert new_ids == sorted(new_ids) and set(new_ids).isdisjoint(old_ids)
        assert again["messages"][1]["reply_to"] == new_ids[0]

        def strip(ms):
            return [{k: v for k, v in m.items() if k not in ("id", "reply_to")} for m in ms]

        assert strip(again["messages"]) == strip(document["messages"])

    def test_link_to_a_message_missing_from_the_document_becomes_null(self, client, engine):
        document = seeded_document(client, engine)
        client.delete("/api/sessions/dev", headers=A)
        document["messages"] = document["messages"][1:]  # the question was lost to retention
        assert client.post("/api/sessions/import", json=document, headers=A).status_code == 201
        (reply,) = client.get("/api/sessions/dev/messages", headers=A).json()["items"]
        assert (reply["content"], reply["reply_to"]) == ("a", None)

    def test_channel_routing_metadata_is_dropped_and_counted(self, client, engine):
        document = seeded_document(client, engine)
        client.delete("/api/sessions/dev", headers=A)
        question, answer = document["messages"]
        question["metadata"] = {
            "channel": "whatsapp",
            "phone_number_id": "2200002",
            "to": "15557770001",
            "wa_message_id": "wamid.X",
            "choice_id": "tue",
        }
        answer["metadata"] = {"channel": "web", "recipient": "US.1", "choices": [{"id": "a", "title": "A"}]}
        response = client.post("/api/sessions/import", json=document, headers=A)
        assert response.status_code == 201 and response.json()["dropped_metadata"] == 2
        again = client.get("/api/sessions/dev/export", headers=A).json()
        assert [m["metadata"] for m in again["messages"]] == [
            {"choice_id": "tue"},
            {"channel": "web", "choices": [{"id": "a", "title": "A"}]},
        ]

    def test_document_without_state_imports_messages_only(self, client, engine):
        make_exchange(engine, "dev", "acme")
        document = client.get("/api/sessions/dev/export", headers=A).json()
        assert document["state"] is None
        client.delete("/api/sessions/dev", headers=A)
        assert client.post("/api/sessions/import", json=document, headers=A).json()["messages"] == 2
        assert client.get("/api/sessions/dev", headers=A).status_code == 404
        assert len(client.get("/api/sessions/dev/messages", headers=A).json()["items"]) == 2


class TestConflict:
    def test_importing_over_an_existing_device_is_409_and_changes_nothing(self, client, engine):
        document = seeded_document(client, engine)
        before = snapshot(engine)
        response = client.post("/api/sessions/import", json=document, headers=A)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "conflict"
        assert snapshot(engine) == before

    def test_device_known_only_by_messages_also_conflicts(self, client, engine):
        document = seeded_document(client, engine)
        client.delete("/api/sessions/dev", headers=A)
        make_message(engine, "dev", "acme")
        assert client.post("/api/sessions/import", json=document, headers=A).status_code == 409

    def test_channel_ids_are_per_device_so_a_copy_under_another_device_imports(self, client, engine):
        # Dedup keys are (tenant_id, device_id, external_id), so tables can be distributed by device.
        make_state(engine, "dev", "acme")
        make_message(engine, "dev", "acme", external_id="wamid.X")
        document = client.get("/api/sessions/dev/export", headers=A).json()
        document["device_id"] = "copy"
        assert client.post("/api/sessions/import", json=document, headers=A).status_code == 201
        with engine.begin() as conn:
            holders = (
                conn.exec_driver_sql(
                    "SELECT device_id FROM conversation_messages WHERE external_id = 'wamid.X' ORDER BY device_id"
                )
                .scalars()
                .all()
            )
        assert holders == ["copy", "dev"]
        # Importing the same device again is still refused: the tenant already holds it.
        before = snapshot(engine)
        assert client.post("/api/sessions/import", json=document, headers=A).status_code == 409
        assert snapshot(engine) == before


def _drop(key):
    def mutate(doc):
        del doc[key]

    return mutate


def _set(path, value):
    def mutate(doc):
        target = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return mutate


def _drop_lock_agent(doc):
    del doc["state"]["lock"]["agent"]


MALFORMED = {
    "newer format_version": (_set(["format_version"], 2), "format_version 2 is newer"),
    "format_version 0": (_set(["format_version"], 0), "format_version"),
    "format_version as text": (_set(["format_version"], "1"), "format_version"),
    "missing format_version": (_drop("format_version"), "format_version"),
    "other kind": (_set(["kind"], "something.else"), "kind"),
    "missing messages": (_drop("messages"), "messages"),
    "missing state": (_drop("state"), "state"),
    "missing device": (_drop("device_id"), "device_id"),
    "unknown key": (_set(["extra"], 1), "extra"),
    "messages not a list": (_set(["messages"], {"a": 1}), "messages"),
    "state not an object": (_set(["state"], [1]), "state"),
    "bad device id": (_set(["device_id"], "a b"), "device_id"),
    "bad role": (_set(["messages", 0, "role"], "robot"), "role"),
    "content not text": (_set(["messages", 0, "content"], 5), "content"),
    "user without status": (_set(["messages", 0, "status"], None), "status"),
    "assistant with status": (_set(["messages", 1, "status"], "done"), "status"),
    "duplicate ids": (lambda doc: doc["messages"][1].update(id=doc["messages"][0]["id"]), "unique"),
    "NUL in content": (_set(["messages", 0, "content"], "a\u0000"), "NUL"),
    "naive time": (_set(["messages", 0, "created_at"], "2026-01-01T00:00:00"), "created_at"),
    "not a time": (_set(["state", "last_activity_at"], "yesterday"), "last_activity_at"),
    "lock without expiry": (_set(["state", "lock", "expires_at"], None), "expires_at"),
    "lock without agent": (_drop_lock_agent, "agent"),
    "ttl out of range": (_set(["state", "session_ttl"], 0), "session_ttl"),
    "bad agent": (_set(["state", "lock", "agent"], "Billing Team"), "lock.agent"),
    "flat lock columns": (_set(["state", "active_agent"], "billing"), "active_agent"),
    "time out of range": (_set(["messages", 0, "created_at"], "0001-01-01T00:00:00+05:00"), "out of range"),
    "bad audit event": (_set(["audit"], [{"event": "stolen"}]), "audit"),
    "context part unknown": (_set(["state", "context", "secrets"], {}), "secrets"),
}


class TestMalformedImport:
    @pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
    def test_is_422_and_changes_nothing(self, client, engine, case):
        document = seeded_document(client, engine)
        client.delete("/api/sessions/dev", headers=A)
        mutate, fragment = MALFORMED[case]
        broken = copy.deepcopy(document)
        mutate(broken)
        before = snapshot(engine)
        response = client.post(
            "/api/sessions/import", headers=A | {"Content-Type": "application/json"}, content=json.dumps(broken)
        )
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert fragment in error["message"]
        assert snapshot(engine) == before

    @pytest.mark.parametrize("body", [b"[]", b'"x"', b"null", b"{", b"{}"])
    def test_not_a_document_is_422(self, client, engine, body):
        response = client.post("/api/sessions/import", headers=A | {"Content-Type": "application/json"}, content=body)
        assert response.status_code == 422
        assert snapshot(engine)["conversation_states"] == []

    def test_a_long_document_is_checked_in_slices_that_still_name_the_message(self, client, engine):
        document = seeded_document(client, engine)
        client.delete("/api/sessions/dev", headers=A)
        question = document["messages"][0] | {"reply_to": None}
        document["messages"] = [question | {"id": n} for n in range(1, 1001)]  # five slices
        document["messages"][650]["role"] = "robot"
        before = snapshot(engine)
        response = client.post("/api/sessions/import", json=document, headers=A)
        assert response.status_code == 422
        assert response.json()["error"]["message"].startswith("body.messages.650: ")
        document["format_version"] = 2  # the version is still judged first
        assert (
            "format_version 2 is newer"
            in client.post("/api/sessions/import", json=document, headers=A).json()["error"]["message"]
        )
        assert snapshot(engine) == before
        document["format_version"] = 1
        document["messages"][650]["role"] = "user"
        response = client.post("/api/sessions/import", json=document, headers=A)
        assert (response.status_code, response.json()["messages"]) == (201, 1000)

    def test_the_unchanged_document_imports(self, client, engine):
        document = seeded_document(client, engine)
        client.delete("/api/sessions/dev", headers=A)
        assert client.post("/api/sessions/import", json=document, headers=A).status_code == 201


UUID_DEVICE = "9b2e4f6a-1c3d-4e5f-8a7b-6c5d4e3f2a1b"
UUID_SPELLINGS = [
    "{" + UUID_DEVICE.upper() + "}",
    UUID_DEVICE.upper(),
    "urn:uuid:" + UUID_DEVICE,
    UUID_DEVICE.replace("-", ""),
]


def uuid_document(client, engine) -> dict:
    make_state(engine, UUID_DEVICE, "acme", agent="billing")
    make_exchange(engine, UUID_DEVICE, "acme")
    return client.get(f"/api/sessions/{UUID_DEVICE}/export", headers=A).json()


def stored_device_ids(engine) -> set[str]:
    with engine.begin() as conn:
        return set(
            conn.exec_driver_sql(
                "SELECT device_id FROM conversation_states UNION SELECT device_id FROM conversation_messages "
                "UNION SELECT device_id FROM conversation_audit"
            ).scalars()
        )


class TestImportedDeviceIds:
    @pytest.mark.parametrize("spelling", UUID_SPELLINGS)
    def test_a_uuid_spelled_otherwise_is_the_same_device_so_409(self, client, engine, spelling):
        document = uuid_document(client, engine)
        document["device_id"] = spelling
        before = snapshot(engine)
        response = client.post("/api/sessions/import", json=document, headers=A)
        assert (response.status_code, response.json()["error"]["code"]) == (409, "conflict")
        assert snapshot(engine) == before

    @pytest.mark.parametrize("spelling", UUID_SPELLINGS)
    def test_a_uuid_spelled_otherwise_is_stored_as_the_routes_address_it(self, client, engine, spelling):
        document = uuid_document(client, engine)
        assert client.delete(f"/api/sessions/{UUID_DEVICE}", headers=A).status_code == 204
        document["device_id"] = spelling
        response = client.post("/api/sessions/import", json=document, headers=A)
        assert response.status_code == 201, response.text
        assert response.json()["device_id"] == UUID_DEVICE
        assert stored_device_ids(engine) == {UUID_DEVICE}
        # Every spelling the routes accept reaches it, and erasing it leaves nothing behind.
        assert client.get(f"/api/sessions/{spelling}/export", headers=A).json()["device_id"] == UUID_DEVICE
        assert client.delete(f"/api/sessions/{spelling}", headers=A).status_code == 204
        assert stored_device_ids(engine) == set()

    @pytest.mark.parametrize("device", ["a/b", "/", "b/", ".", ".."])
    def test_an_id_no_route_can_address_is_422_and_changes_nothing(self, client, engine, device):
        document = seeded_document(client, engine)
        document["device_id"] = device
        before = snapshot(engine)
        response = client.post("/api/sessions/import", json=document, headers=A)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "unaddressable_device_id"
        assert "device_id" in response.json()["error"]["message"]
        assert snapshot(engine) == before

    def test_every_other_printable_ascii_character_imports_and_is_addressable(self, client, engine):
        from urllib.parse import quote

        document = seeded_document(client, engine)
        for char in sorted(set(map(chr, range(0x21, 0x7F))) - {"/"}):
            device = f"d{char}x"
            document["device_id"] = device
            response = client.post("/api/sessions/import", json=document, headers=A)
            assert (response.status_code, response.json()["device_id"]) == (201, device), char
            path = f"/api/sessions/{quote(device, safe='')}"
            assert client.get(f"{path}/export", headers=A).json()["device_id"] == device, char
            assert client.delete(path, headers=A).status_code == 204, char


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]


class TestNonFiniteNumbers:
    @pytest.mark.parametrize("number", NON_FINITE)
    @pytest.mark.parametrize("where", ["context", "metadata", "tools_used"])
    def test_a_non_finite_number_anywhere_is_422_and_changes_nothing(self, client, engine, number, where):
        document = seeded_document(client, engine)
        client.delete("/api/sessions/dev", headers=A)
        marker = "__NUMBER__"
        if where == "context":
            document["state"]["context"]["conversation_state"]["x"] = [1, marker]
        elif where == "metadata":
            document["messages"][0]["metadata"]["usage"] = {"cost": marker}
        else:
            document["messages"][1]["tools_used"] = [marker]
        body = json.dumps(document).replace(f'"{marker}"', number)
        before = snapshot(engine)
        response = client.post("/api/sessions/import", headers=A | {"Content-Type": "application/json"}, content=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "non_finite_number"
        assert snapshot(engine) == before

"""A web chat device's own history: messages, sessions and erasure, authenticated by the device id."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import make_settings
from tests.utils.agents import Gate, Scripted
from tests.utils.apps import app_client, use_registry
from tests.utils.factories import make_exchange, make_state, scalar, snapshot
from tests.utils.states import row

DEVICE = "0b6f9c1e-3d2a-4f5b-8c7d-9e0a1b2c3d4e"
OTHER = "7c1d2e3f-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
VOLATILE = {"x-request-id", "date"}
ITEM_KEYS = {"id", "role", "content", "agent", "created_at", "sent_at", "reply_to", "stopped"}


@pytest.fixture
def client(settings, engine):
    with app_client(settings) as client:
        yield client


@pytest.fixture
def two_tenants(database_url, engine):
    with app_client(make_settings(database_url, web_tenants="default,acme")) as client:
        yield client


def headers(device: str = DEVICE, **more: str) -> dict[str, str]:
    return {"X-Device-ID": device, **more}


def chat(client, message: str, device: str = DEVICE, **more: str):
    response = client.post("/api/chat", json={"message": message}, headers=headers(device, **more))
    assert response.status_code == 200, response.text
    return response.json()


def messages(client, query: str = "", device: str = DEVICE, **more: str):
    return client.get(f"/api/chat/messages{query}", headers=headers(device, **more))


def answer(response) -> tuple[int, bytes, dict[str, str]]:
    kept = {k: v for k, v in response.headers.items() if k.lower() not in VOLATILE}
    return response.status_code, response.content, kept


class TestMessages:
    def test_current_session_newest_first_with_who_answered(self, client):
        chat(client, "hi")
        chat(client, "I need to book an appointment")
        body = messages(client).json()
        assert body["next_before"] is None
        items = body["items"]
        assert all(set(item) == ITEM_KEYS for item in items)
        assert [(i["role"], i["agent"]) for i in items] == [
            ("assistant", "scheduling"),
            ("user", "scheduling"),
            ("assistant", "manager"),
            ("user", "manager"),
        ]
        assert [i["content"] for i in items][1::2] == ["I need to book an appointment", "hi"]
        assert items[0]["reply_to"] == items[1]["id"] and items[1]["reply_to"] is None
        assert [i["id"] for i in items] == sorted((i["id"] for i in items), reverse=True)

    def test_a_device_without_data_has_an_empty_history(self, client, engine):
        assert messages(client).json() == {"items": [], "next_before": None}
        assert client.get("/api/chat/sessions", headers=headers()).json() == {"items": []}
        assert snapshot(engine)["conversation_states"] == []

    def test_pagination_walks_every_message_once(self, client):
        for text in ("one", "two", "three"):
            chat(client, text)
        everything = [i["id"] for i in messages(client).json()["items"]]
        assert len(everything) == 6
        seen, before = [], None
        for _ in range(3):
            query = "?limit=2" + (f"&before={before}" if before else "")
            page = messages(client, query).json()
            assert len(page["items"]) == 2
            seen += [i["id"] for i in page["items"]]
            before = page["next_before"]
        assert before is None  # the last page is exactly full: no empty page after it
        assert seen == everything

    @pytest.mark.parametrize(("limit", "full"), [(5, True), (6, False), (7, False), (200, False)])
    def test_next_before_only_when_more_remain(self, client, limit, full):
        for text in ("one", "two", "three"):
            chat(client, text)
        page = messages(client, f"?limit={limit}").json()
        assert len(page["items"]) == min(limit, 6)
        assert (page["next_before"] is not None) == full
        if full:
            assert page["next_before"] == page["items"][-1]["id"]
            rest = messages(client, f"?before={page['next_before']}").json()
            assert len(rest["items"]) == 1 and rest["next_before"] is None

    @pytest.mark.parametrize(
        "query",
        [
            "?limit=0",
            "?limit=201",
            "?limit=x",
            "?before=0",
            "?before=-1",
            "?session_id=",
            "?session_id=has%20space",
            f"?session_id={'s' * 129}",
        ],
    )
    def test_bad_query_is_422(self, client, query):
        response = messages(client, query)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"

    def test_before_the_first_message_is_empty(self, client):
        chat(client, "hi")
        first = messages(client).json()["items"][-1]["id"]
        assert messages(client, f"?before={first}").json() == {"items": [], "next_before": None}


class TestSessions:
    def test_new_conversation_starts_empty_and_the_old_one_is_listed(self, client):
        chat(client, "hi")
        old = client.get("/api/chat/sessions", headers=headers()).json()["items"]
        assert len(old) == 1
        new = client.post("/api/chat/new", headers=headers()).json()["session_id"]
        assert messages(client).json()["items"] == []
        listed = client.get("/api/chat/sessions", headers=headers()).json()["items"]
        assert [(s["session_id"], s["message_count"]) for s in listed] == [(new, 0), (old[0]["session_id"], 2)]
        assert set(listed[0]) == {"session_id", "status", "started_at", "last_activity_at", "message_count"}
        assert listed[1]["status"] == "ended"
        previous = messages(client, f"?session_id={old[0]['session_id']}").json()["items"]
        assert [(i["role"], i["content"]) for i in previous][1] == ("user", "hi") and len(previous) == 2
        chat(client, "hello again")
        assert [i["content"] for i in messages(client).json()["items"]][-1] == "hello again"

    def test_delete_a_session_erases_its_messages_only(self, client, engine):
        chat(client, "hi")
        old = client.get("/api/chat/sessions", headers=headers()).json()["items"][0]["session_id"]
        client.post("/api/chat/new", headers=headers())
        chat(client, "hello")
        response = client.delete(f"/api/chat/sessions/{old}", headers=headers())
        assert response.status_code == 204 and response.content == b""
        listed = client.get("/api/chat/sessions", headers=headers()).json()["items"]
        assert [s["session_id"] for s in listed] == [row(engine, DEVICE)["session_id"]]
        assert messages(client, f"?session_id={old}").status_code == 404
        assert [i["content"] for i in messages(client).json()["items"]][-1] == "hello"
        assert client.delete(f"/api/chat/sessions/{old}", headers=headers()).status_code == 404

    def test_deleting_the_current_session_keeps_its_lock_and_context(self, client, engine):
        chat(client, "I need to book an appointment")
        chat(client, "tomorrow")
        before = row(engine, DEVICE)
        current = before["session_id"]
        assert client.delete(f"/api/chat/sessions/{current}", headers=headers()).status_code == 204
        assert messages(client).json()["items"] == []
        after = row(engine, DEVICE)
        assert (after["active_agent"], after["context"], after["version"]) == (
            "scheduling",
            before["context"],
            before["version"],
        )
        # The flow goes on where it was.
        assert chat(client, "10am")["reply"].startswith("Book tomorrow at 10:00")
        listed = client.get("/api/chat/sessions", headers=headers()).json()["items"]
        assert [(s["session_id"], s["message_count"]) for s in listed] == [(current, 2)]


class TestOwnDataOnly:
    def test_another_devices_session_is_the_same_404_as_a_missing_one(self, client, engine):
        chat(client, "hi", device=OTHER)
        theirs = row(engine, OTHER)["session_id"]
        before = snapshot(engine)
        for method, template in [("GET", "/api/chat/messages?session_id={}"), ("DELETE", "/api/chat/sessions/{}")]:
            seen = answer(client.request(method, template.format(theirs), headers=headers()))
            unseen = answer(client.request(method, template.format("sess_20990101_000000_ffffff"), headers=headers()))
            assert seen[0] == 404, seen
            assert seen == unseen
        assert messages(client).json()["items"] == []
        assert client.get("/api/chat/sessions", headers=headers()).json() == {"items": []}
        assert snapshot(engine) == before

    def test_another_tenants_data_of_the_same_device_is_never_shown(self, two_tenants, engine):
        client = two_tenants
        make_state(engine, DEVICE, "acme", session_id="sess_acme")
        make_exchange(engine, DEVICE, "acme", text="acme secret", session_id="sess_acme")
        chat(client, "hi")
        mine = messages(client).json()["items"]
        assert "acme secret" not in [i["content"] for i in mine]
        sessions = client.get("/api/chat/sessions", headers=headers()).json()["items"]
        assert "sess_acme" not in [s["session_id"] for s in sessions]
        seen = answer(messages(client, "?session_id=sess_acme"))
        assert seen[0] == 404 and seen == answer(messages(client, "?session_id=sess_nowhere"))
        assert client.delete("/api/chat/sessions/sess_acme", headers=headers()).status_code == 404
        client.delete("/api/chat/history", headers=headers())
        # The tenant's own view is untouched.
        acme = messages(client, "", **{"X-Tenant-ID": "acme"}).json()["items"]
        assert [i["content"] for i in acme] == ["hello!", "acme secret"]

    def test_erasing_my_history_leaves_other_devices_alone(self, client, engine):
        chat(client, "hi")
        chat(client, "hello", device=OTHER)
        other_rows = scalar(engine, "SELECT count(*) FROM conversation_messages WHERE device_id = %(d)s", d=OTHER)
        assert client.delete("/api/chat/history", headers=headers()).status_code == 204
        assert (
            scalar(engine, "SELECT count(*) FROM conversation_messages WHERE device_id = %(d)s", d=OTHER) == other_rows
        )
        assert row(engine, OTHER) is not None


ROUTES = [
    ("GET", "/api/chat/messages"),
    ("GET", "/api/chat/sessions"),
    ("DELETE", "/api/chat/sessions/sess_20260101_000000_aaaaaa"),
    ("DELETE", "/api/chat/history"),
]


class TestDeviceIds:
    @pytest.mark.parametrize(("method", "path"), ROUTES)
    @pytest.mark.parametrize(
        ("sent", "status", "code"),
        [
            ({}, 400, "missing_device_id"),
            ({"X-Device-ID": " "}, 400, "missing_device_id"),
            ({"X-Device-ID": "not-a-uuid"}, 400, "invalid_device_id"),
            ({"X-Device-ID": DEVICE, "X-Tenant-ID": "has space"}, 400, "invalid_tenant_id"),
        ],
    )
    def test_missing_or_malformed_is_400_and_changes_nothing(self, client, engine, method, path, sent, status, code):
        make_state(engine, DEVICE)
        make_exchange(engine, DEVICE)
        before = snapshot(engine)
        response = client.request(method, path, headers=sent)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
        assert snapshot(engine) == before

    @pytest.mark.parametrize(("method", "path"), ROUTES)
    def test_unsigned_ids_are_401_when_ids_are_signed(self, database_url, engine, method, path):
        with app_client(make_settings(database_url, device_id_secret="s3cret-device-key")) as client:
            device = client.post("/api/devices").json()["device_id"]
            plain = device.partition(".")[0]
            assert client.post("/api/chat", json={"message": "hi"}, headers=headers(device)).status_code == 200
            before = snapshot(engine)
            for forged in (plain, f"{plain}.", f"{uuid.uuid4()}.{device.partition('.')[2]}"):
                response = client.request(method, path, headers=headers(forged))
                assert response.status_code == 401, forged
                assert response.json()["error"]["code"] == "invalid_device_signature"
            assert snapshot(engine) == before
            assert messages(client, "", device=device).status_code == 200


class TestErase:
    def test_delete_history_erases_everything_of_the_device(self, client, engine):
        chat(client, "I need to book an appointment", **{"Idempotency-Key": "k1"})
        chat(client, "tomorrow")
        assert scalar(engine, "SELECT count(*) FROM conversation_audit WHERE device_id = %(d)s", d=DEVICE) > 0
        response = client.delete("/api/chat/history", headers=headers())
        assert response.status_code == 204
        for table in ("conversation_states", "conversation_messages", "conversation_audit"):
            assert scalar(engine, f"SELECT count(*) FROM {table} WHERE device_id = %(d)s", d=DEVICE) == 0
        assert messages(client).json() == {"items": [], "next_before": None}
        # The idempotency key went with the messages: the same key is a new message now.
        body = chat(client, "I need to book an appointment", **{"Idempotency-Key": "k1"})
        assert body["lock"]["agent"] == "scheduling"
        assert len(messages(client).json()["items"]) == 2

    def test_delete_history_of_an_unknown_device_is_204(self, client, engine):
        assert client.delete("/api/chat/history", headers=headers()).status_code == 204
        assert all(rows == [] for rows in snapshot(engine).values())


class TestLateReply:
    def test_a_reply_after_202_appears_once_answered(self, database_url, engine):
        manager = Gate(Scripted("manager"), when=lambda message: message.text == "slow")
        with app_client(make_settings(database_url, chat_wait_seconds=0.2)) as client:
            use_registry(client, {"manager": manager})
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(client.post, "/api/chat", json={"message": "slow"}, headers=headers())
                assert manager.entered.wait(10)
                queued = client.post("/api/chat", json={"message": "behind"}, headers=headers())
                assert queued.status_code == 202
                message_id = queued.json()["message_id"]
                waiting = messages(client).json()["items"]
                # Shown in the current session while it waits, with no reply yet.
                assert [(i["id"], i["content"]) for i in waiting][0] == (message_id, "behind")
                assert not any(i["reply_to"] == message_id for i in waiting)
                manager.release.set()
                assert first.result(30).status_code == 200
            deadline = time.monotonic() + 10
            reply = None
            while reply is None and time.monotonic() < deadline:
                items = messages(client).json()["items"]
                reply = next((i for i in items if i["reply_to"] == message_id), None)
                if reply is None:
                    time.sleep(0.05)
            assert reply is not None, "the late reply never appeared"
            assert (reply["role"], reply["content"], reply["agent"]) == ("assistant", "manager: behind", "manager")


class TestChoices:
    def test_choice_id_reaches_the_pipeline_and_response_has_choices_and_merged(self, client, engine):
        response = client.post(
            "/api/chat", json={"message": "Tomorrow", "choice_id": "day:tomorrow"}, headers=headers()
        )
        assert response.status_code == 200
        body = response.json()
        assert body["choices"] == [] and body["merged"] is False
        stored = scalar(engine, "SELECT metadata FROM conversation_messages WHERE role = 'user'")
        assert stored == {"channel": "web", "choice_id": "day:tomorrow"}

    @pytest.mark.parametrize("choice_id", ["", "x" * 257, "nul\u0000", 5])
    def test_bad_choice_id_is_422_and_stores_nothing(self, client, engine, choice_id):
        response = client.post("/api/chat", json={"message": "hi", "choice_id": choice_id}, headers=headers())
        assert response.status_code == 422
        assert scalar(engine, "SELECT count(*) FROM conversation_messages") == 0

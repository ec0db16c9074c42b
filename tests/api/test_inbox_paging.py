"""Inbox paging: every conversation once and in order, cursors bound to tenant and filters, and the order's
column (conversation_states.last_message_at) kept by every statement that stores a message."""

from __future__ import annotations

import uuid

import pytest

from app.admin import cursor as cursor_format
from app.admin import inbox as inbox_sql
from app.channels.whatsapp import WhatsAppSender, send_to_device
from tests.api.test_inbox import TENANT, chat, settings
from tests.channels.payloads import USER, change, delivery, post, text
from tests.sessions.conftest import A, B
from tests.utils import aio
from tests.utils.agents import Scripted
from tests.utils.apps import app_client, use_registry
from tests.utils.factories import scalar, snapshot
from tests.utils.inbox_seed import seed

# States whose last_message_at is not the later of their last activity and their newest message.
OUT_OF_STEP = """
SELECT count(*) FROM conversation_states s
WHERE s.last_message_at IS DISTINCT FROM GREATEST(s.last_activity_at, (
    SELECT max(m.created_at) FROM conversation_messages m
    WHERE m.tenant_id = s.tenant_id AND m.device_id = s.device_id))
"""


@pytest.fixture
def client(database_url, engine, graph):
    with app_client(settings(database_url, graph)) as client:
        use_registry(client, {"manager": Scripted("manager")})
        yield client


def page(client, headers=A, **query) -> dict:
    response = client.get("/api/inbox", params=query, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def walk(client, headers=A, **query) -> list[list[str]]:
    """Every page's device ids, following next_cursor to the end."""
    pages, cursor = [], None
    while True:
        body = page(client, headers, **query, **({"cursor": cursor} if cursor else {}))
        pages.append([i["device_id"] for i in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


def seeded(engine, n: int, held_every: int = 0, tenant: str = TENANT) -> list[str]:
    with engine.begin() as conn:
        seed(conn, tenant, n, held_every)
    return [f"inbox-{i}" for i in range(1, n + 1)]  # newest first


def last_message_at(engine, device: str):
    return scalar(engine, "SELECT last_message_at FROM conversation_states WHERE device_id = %(d)s", d=device)


def newest_created(engine, device: str):
    return scalar(engine, "SELECT max(created_at) FROM conversation_messages WHERE device_id = %(d)s", d=device)


class TestPaging:
    def test_every_conversation_once_in_order_and_no_cursor_on_the_last_page(self, client, engine):
        devices = seeded(engine, 23)
        pages = walk(client, limit=5)
        assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
        assert [d for p in pages for d in p] == devices
        assert page(client, limit=23)["next_cursor"] is None

    def test_a_new_message_while_paging_moves_one_conversation_and_no_other(self, client, engine):
        devices = [str(uuid.uuid4()) for _ in range(12)]
        for device in devices:
            chat(client, device, "hello")
        newest_first = devices[::-1]
        first = page(client, limit=4)
        assert [i["device_id"] for i in first["items"]] == newest_first[:4]
        seen, unseen = newest_first[1], newest_first[8]
        chat(client, seen, "again")  # listed already: not listed again
        chat(client, unseen, "again")  # not listed yet: moves above the cursor, later pages skip it
        rest, cursor = [], first["next_cursor"]
        while cursor:
            body = page(client, limit=4, cursor=cursor)
            rest += [i["device_id"] for i in body["items"]]
            cursor = body["next_cursor"]
        assert rest == [d for d in newest_first[4:] if d != unseen]
        assert [i["device_id"] for i in page(client, limit=2)["items"]] == [unseen, seen]

    def test_filters_page_with_the_cursor(self, client, engine, monkeypatch):
        devices = seeded(engine, 30, held_every=3)
        held = [d for i, d in enumerate(devices, 1) if i % 3 == 0]
        assert [d for p in walk(client, limit=3, needs_person="true") for d in p] == held
        web = devices[1::2]
        assert [d for p in walk(client, limit=4, channel="web") for d in p] == web
        held_web = [d for d in held if d in web]
        assert [d for p in walk(client, limit=2, channel="web", needs_person="true") for d in p] == held_web
        # A bounded walk: short pages with a cursor, and still each conversation once, in order.
        monkeypatch.setattr(inbox_sql, "SCAN_ROWS", 3)
        pages = walk(client, limit=2, channel="web")
        assert [d for p in pages for d in p] == web
        assert pages[0] == [devices[1]] and len(pages) > len(web) // 2

    def test_a_bad_cursor_is_a_typed_422_and_changes_nothing(self, client, engine):
        seeded(engine, 5)
        good = page(client, limit=2)["next_cursor"]
        payload, check = good.split(".")
        flipped = ("B" if payload[3] != "B" else "C").join((payload[:3], payload[4:]))
        before = snapshot(engine)
        for cursor, query in [
            ("not-a-cursor", {}),
            ("%%%.###", {}),
            (good[:-2], {}),
            (f"{flipped}.{check}", {}),
            (good + "." + check, {}),
            (good + "==", {}),  # base64 would read these as the same bytes: the cursor is not the one given
            (" " + good, {}),
            ("x" * 801, {}),
            (good, {"channel": "web"}),  # made for other filters
            (good, {"needs_person": "true"}),
        ]:
            response = client.get("/api/inbox", params={"limit": 2, "cursor": cursor, **query}, headers=A)
            assert response.status_code == 422, (cursor, query)
            assert response.json()["error"]["code"] in {"invalid_cursor", "validation_error"}
        response = client.get("/api/inbox", params={"cursor": f"{flipped}.{check}"}, headers=A)
        assert response.json() == {
            "error": {
                "code": "invalid_cursor",
                "message": "cursor: altered, or made for another tenant or other filters",
            }
        }
        assert snapshot(engine) == before

    def test_a_forged_cursor_whose_device_id_no_conversation_could_have_is_a_422(self, client, engine):
        # The check's key is no secret: a signed payload may still be anyone's making.
        seeded(engine, 3)
        for device in ('"x\\u0000y"', '"\\ud800"', '""', "7"):
            payload = f"[1,{device}]".encode()
            check = cursor_format._check(TENANT, cursor_format.Filters(), payload)
            forged = f"{cursor_format._b64(payload)}.{cursor_format._b64(check)}"
            response = client.get("/api/inbox", params={"cursor": forged}, headers=A)
            assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_cursor"), device

    def test_the_cursor_after_the_longest_device_ids_is_accepted(self, client, engine):
        # 128 characters of 3 and 4 UTF-8 bytes: the longest cursors this inbox can issue.
        devices = ["\u4e2d" * 128, "\U0001f600" * 128, "inbox-x"]
        with engine.begin() as conn:
            for age, device in enumerate(devices, start=1):
                conn.exec_driver_sql(
                    "INSERT INTO conversation_states (tenant_id, device_id, last_activity_at, last_message_at) "
                    "VALUES (%(t)s, %(d)s, now() - make_interval(secs => %(a)s), now() - make_interval(secs => %(a)s))",
                    {"t": TENANT, "d": device, "a": age},
                )
        cursors = []
        body = page(client, limit=1)
        while body["next_cursor"] is not None:
            cursors.append(body["next_cursor"])
            body = page(client, limit=1, cursor=body["next_cursor"])
        assert len(cursors) == 2 and max(map(len, cursors)) <= cursor_format.MAX_CHARS
        assert [page(client, limit=1, cursor=c)["items"][0]["device_id"] for c in cursors] == devices[1:]

    def test_another_tenants_cursor_is_refused(self, client, engine):
        seeded(engine, 5, tenant="acme")
        seeded(engine, 0, tenant="globex")
        cursor = page(client, limit=2)["next_cursor"]
        response = client.get("/api/inbox", params={"cursor": cursor}, headers=B)
        assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_cursor")
        assert page(client, headers=B) == {"items": [], "next_cursor": None}


def on_top(client, engine, device: str) -> None:
    """The device leads the inbox, and every state's last_message_at is in step with its messages."""
    assert scalar(engine, OUT_OF_STEP) == 0
    assert page(client, limit=1)["items"][0]["device_id"] == device


class TestEveryPathKeepsTheOrder:
    def test_a_web_turn_claim_and_finish(self, client, engine):
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        chat(client, first, "hi")
        chat(client, second, "hi")
        chat(client, first, "again")
        assert last_message_at(engine, first) == newest_created(engine, first)  # FINISH's reply
        on_top(client, engine, first)

    def test_a_message_held_for_a_person_and_the_operator_reply(self, client, engine):
        held, other = str(uuid.uuid4()), str(uuid.uuid4())
        chat(client, held, "hi")
        assert client.post(f"/api/sessions/{held}/takeover", json={"operator": "Ana"}, headers=A).status_code == 200
        chat(client, other, "hi")
        chat(client, held, "anyone?")  # CLAIM alone: no turn runs
        on_top(client, engine, held)
        chat(client, other, "hi again")
        reply = client.post(f"/api/sessions/{held}/messages", json={"text": "Ana here"}, headers=A)
        assert reply.status_code == 201, reply.text
        assert last_message_at(engine, held) == newest_created(engine, held)
        on_top(client, engine, held)

    def test_whatsapp_inbound_and_a_message_sent_outside_a_turn(self, database_url, client, engine, graph):
        post(client, delivery([change([text("hi", "wamid.P1")])]))
        chat(client, str(uuid.uuid4()), "hi")
        post(client, delivery([change([text("again", "wamid.P2")])]))
        on_top(client, engine, USER)
        chat(client, str(uuid.uuid4()), "hi")
        sender = WhatsAppSender(settings(database_url, graph))
        try:
            sent = aio.run(send_to_device, sender.outbox(engine), TENANT, USER, text="An operator here")
        finally:
            sender.close()
        assert sent.status == "sent"
        on_top(client, engine, USER)

    def test_an_import_takes_the_documents_newest_message(self, client, engine):
        device, other = str(uuid.uuid4()), str(uuid.uuid4())
        chat(client, device, "hi")
        document = client.get(f"/api/sessions/{device}/export", headers=A).json()
        assert client.delete(f"/api/sessions/{device}", headers=A).status_code in (200, 204)
        chat(client, other, "hi")
        assert client.post("/api/sessions/import", json=document, headers=A).status_code == 201
        assert scalar(engine, OUT_OF_STEP) == 0
        assert last_message_at(engine, device) == newest_created(engine, device) < last_message_at(engine, other)
        assert [i["device_id"] for i in page(client)["items"]] == [other, device]

    def test_a_new_session_and_deleting_the_newest(self, client, engine):
        device, other = str(uuid.uuid4()), str(uuid.uuid4())
        headers = {"X-Device-ID": device, "X-Tenant-ID": TENANT}
        chat(client, device, "hi")
        chat(client, other, "hi")
        assert client.post("/api/chat/new", headers=headers).status_code == 201
        on_top(client, engine, device)
        chat(client, device, "hello")
        current = client.get("/api/chat/sessions", headers=headers).json()["items"][0]["session_id"]
        before = last_message_at(engine, device)
        assert client.delete(f"/api/chat/sessions/{current}", headers=headers).status_code == 204
        assert last_message_at(engine, device) < before  # its reply went with the session
        assert scalar(engine, OUT_OF_STEP) == 0

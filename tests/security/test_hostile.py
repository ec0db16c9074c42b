"""Hostile input, in one place: oversized, malformed, deeply nested, control characters, SQL, forged and replayed.

Every refusal is a 4xx with the JSON error shape, never a 5xx or a stack trace,
and changes nothing. Several items are covered in depth elsewhere (tests/api,
tests/channels, tests/sessions); here each gets one focused check.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest

from app.api.limits import BodyLimit
from tests.channels.payloads import PATH, change, delivery, post, raw, sign, text
from tests.security.conftest import (
    ADMIN_KEYS,
    CRON_SECRET,
    DEVICE,
    TABLES,
    A,
    asgi_call,
    assert_clean_refusal,
    hardened_settings,
    raw_http,
)
from tests.utils.apps import app_client
from tests.utils.factories import make_exchange, make_state, snapshot
from tests.utils.server import app_env, running_app

SQL = "'; DROP TABLE conversation_states; --"
SQL_NO_SPACE = "';DROP/**/TABLE/**/conversation_states;--"
MIB = 1024 * 1024
ROUTES_WITH_BODIES = [
    ("POST", "/api/chat", False),
    ("POST", PATH, False),
    ("POST", "/api/sessions/import", True),
    ("PATCH", "/api/sessions/wa-15550001111/context", True),
]


def nested(depth: int, leaf: str = "1") -> bytes:
    return ('{"a":' * depth + leaf + "}" * depth).encode()


def body_limit(app, path: str) -> int:
    """The byte limit the app's BodyLimit middleware applies to path."""
    options = next(m.kwargs for m in app.user_middleware if m.cls is BodyLimit)
    return BodyLimit(None, **options).limit_for(path)


def signed(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body)}


def tables_exist(engine) -> bool:
    with engine.begin() as conn:
        return all(conn.exec_driver_sql("SELECT to_regclass(%(t)s)", {"t": t}).scalar() for t in TABLES)


@pytest.fixture
def seeded(engine):
    """A device with state and messages in tenant acme; returns the snapshot to compare against."""
    make_state(engine, "wa-15550001111", "acme", agent="scheduling")
    make_exchange(engine, "wa-15550001111", "acme")
    return snapshot(engine)


class TestBodies:
    @pytest.mark.parametrize(("method", "path", "auth"), ROUTES_WITH_BODIES)
    def test_over_the_limit_is_413(self, client, engine, seeded, method, path, auth):
        # One byte over the route's own limit (the WhatsApp webhook's is 1 MiB: send 10 MB there).
        size = 10 * MIB if path == PATH else body_limit(client.app, path) + 1
        body = b'{"message": "' + b"x" * size + b'"}'
        headers = {**signed(body), "X-Device-ID": DEVICE, **(A if auth else {})}
        response = client.request(method, path, content=body, headers=headers)
        assert_clean_refusal(response, 413)
        assert snapshot(engine) == seeded

    @pytest.mark.parametrize(
        ("method", "path", "auth", "body"),
        [
            (method, path, auth, body)
            for method, path, auth in ROUTES_WITH_BODIES
            for body in (b'{"message": "\xff\xfe"}', b"\xc3\x28{}", b'{"message": "\xed\xa0\x80"}')
            # json.loads decodes UTF-8-encoded surrogates from bytes: the webhook's case is in TestWebhook.
            if not (path == PATH and b"\xed" in body)
        ],
    )
    def test_invalid_utf8_is_refused(self, client, engine, seeded, method, path, auth, body):
        headers = {**signed(body), "X-Device-ID": DEVICE, **(A if auth else {})}
        assert_clean_refusal(client.request(method, path, content=body, headers=headers))
        assert snapshot(engine) == seeded

    @pytest.mark.parametrize(("method", "path", "auth"), ROUTES_WITH_BODIES)
    def test_json_nested_a_thousand_deep_is_refused(self, client, engine, graph, seeded, method, path, auth):
        body = nested(1000)
        headers = {**signed(body), "X-Device-ID": DEVICE, **(A if auth else {})}
        assert_clean_refusal(client.request(method, path, content=body, headers=headers))
        assert snapshot(engine) == seeded and graph.requests == []

    @pytest.mark.parametrize("route", ["patch_context", "import_context", "import_metadata"])
    def test_json_nested_deeper_than_a_response_can_render_is_refused_and_not_stored(
        self, client, engine, seeded, route
    ):
        # 300 levels parse fine, but pydantic renders at most 255 levels: stored, such a value
        # would break every later read and export of the device.
        deep = json.loads(nested(300))
        if route == "patch_context":
            response = client.patch(
                "/api/sessions/wa-15550001111/context", json={"conversation_state": {"k": deep}}, headers=A
            )
        else:
            document = client.get("/api/sessions/wa-15550001111/export", headers=A).json() | {"device_id": "copy"}
            if route == "import_context":
                document["state"]["context"]["conversation_state"] = {"k": deep}
            else:
                document["messages"][0]["metadata"] = {"k": deep}
            response = client.post("/api/sessions/import", json=document, headers=A)
        assert_clean_refusal(response)
        assert snapshot(engine) == seeded
        assert client.get("/api/sessions/wa-15550001111", headers=A).status_code == 200

    @pytest.mark.parametrize("message", ["a\u0000b", "\u0000"])
    def test_chat_text_postgresql_cannot_store_is_refused(self, client, engine, message):
        response = client.post("/api/chat", json={"message": message}, headers={"X-Device-ID": DEVICE})
        assert_clean_refusal(response, 400, 422)
        assert snapshot(engine)["conversation_messages"] == []


@pytest.fixture(scope="module")
def server(database_url):
    with running_app(app_env(database_url, admin_api_keys=ADMIN_KEYS, cron_secret=CRON_SECRET)) as server:
        yield server


class TestHeaders:
    BAD = ("\x00", "\x01", "\x1b[2J", "\x7f", "\x0b", "\r\n", "\n")
    HEADERS = ("X-Device-ID", "X-Tenant-ID", "Idempotency-Key", "Authorization")

    @staticmethod
    def request_for(header: str, bad: bytes) -> bytes:
        body = b'{"message": "hi"}'
        value = (
            (b"Bearer " + A["Authorization"].split()[1].encode() + bad)
            if header == "Authorization"
            else ((DEVICE.encode() if header == "X-Device-ID" else b"acme") + bad + b"x")
        )
        lines = [
            b"POST /api/chat HTTP/1.1" if header != "Authorization" else b"GET /api/sessions HTTP/1.1",
            b"Host: 127.0.0.1",
            b"Content-Type: application/json",
            b"Connection: close",
        ]
        if header != "X-Device-ID":
            lines.append(b"X-Device-ID: " + DEVICE.encode())
        lines.append(header.encode() + b": " + value)
        if header != "Authorization":
            lines.append(b"Content-Length: " + str(len(body)).encode())
            return b"\r\n".join(lines) + b"\r\n\r\n" + body
        return b"\r\n".join(lines) + b"\r\n\r\n"

    @pytest.mark.parametrize("header", HEADERS)
    def test_control_characters_through_uvicorn_are_4xx(self, server, engine, header):
        for bad in self.BAD:
            if header == "Authorization" and bad in ("\r\n", "\n"):
                continue  # trailing line breaks end the header line: the key alone then arrives
            status, response = raw_http(server.port, self.request_for(header, bad.encode("latin-1")))
            assert 400 <= status < 500, (header, bad, response[-300:])
            assert b"Traceback" not in response
        assert snapshot(engine)["conversation_messages"] == []
        assert "Traceback" not in server.log()

    @pytest.mark.parametrize("header", HEADERS)
    def test_control_characters_straight_to_the_asgi_app_are_4xx(self, client, engine, header):
        # What uvicorn refuses may still reach the app through another adapter (Mangum in Lambda).
        for bad in self.BAD:
            name = header.lower().encode()
            if header == "Authorization":
                value = b"Bearer " + A["Authorization"].split()[1].encode() + b"x" + bad.encode("latin-1")
                status, body = asgi_call(client.app, "GET", "/api/sessions", [(name, value)])
            else:
                value = (DEVICE.encode() if header == "X-Device-ID" else b"acme") + bad.encode("latin-1") + b"x"
                headers = [(b"content-type", b"application/json"), (name, value)]
                if header != "X-Device-ID":
                    headers.append((b"x-device-id", DEVICE.encode()))
                status, body = asgi_call(client.app, "POST", "/api/chat", headers, b'{"message": "hi"}')
            assert 400 <= status < 500 and b"Traceback" not in body, (header, bad, status, body[:200])
            assert "error" in json.loads(body)
        assert snapshot(engine)["conversation_messages"] == []


class TestSqlAsData:
    @pytest.mark.parametrize(
        ("headers", "code"),
        [
            ({"X-Device-ID": SQL}, "invalid_device_id"),
            ({"X-Device-ID": DEVICE, "X-Tenant-ID": SQL}, "invalid_tenant_id"),
            ({"X-Device-ID": DEVICE, "Idempotency-Key": SQL + "\t"}, "invalid_idempotency_key"),
        ],
    )
    def test_sql_in_chat_headers_is_400_and_changes_nothing(self, client, engine, seeded, headers, code):
        response = client.post("/api/chat", json={"message": "hi"}, headers=headers)
        assert_clean_refusal(response, 400)
        assert response.json()["error"]["code"] == code
        assert snapshot(engine) == seeded and tables_exist(engine)

    def test_sql_shaped_but_valid_ids_are_opaque_data(self, database_url, engine, graph):
        settings = hardened_settings(database_url, graph.url, web_tenants=f"default,{SQL_NO_SPACE}")
        with app_client(settings) as client:
            response = client.post(
                "/api/chat",
                json={"message": SQL},
                headers={"X-Device-ID": DEVICE, "X-Tenant-ID": SQL_NO_SPACE, "Idempotency-Key": SQL},
            )
        assert response.status_code == 200
        with engine.begin() as conn:
            stored = conn.exec_driver_sql(
                "SELECT tenant_id, content, external_id FROM conversation_messages WHERE role = 'user'"
            ).one()
        assert tuple(stored) == (SQL_NO_SPACE, SQL, f"web:{DEVICE}:{SQL}") and tables_exist(engine)

    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
    def test_sql_in_admin_paths_is_400_and_changes_nothing(self, client, engine, seeded, method):
        path = f"/api/sessions/{quote(SQL, safe='')}" + ("/lock" if method != "GET" else "")
        body = {"agent": "scheduling"} if method == "PUT" else None
        response = client.request(method, path, json=body, headers=A)
        assert_clean_refusal(response, 400)
        assert snapshot(engine) == seeded and tables_exist(engine)

    @pytest.mark.parametrize(
        "body",
        [{"agent": SQL}, {"agent": "scheduling", "ttl": "60; DROP TABLE x"}, {"agent": "scheduling", "extra": SQL}],
    )
    def test_sql_in_lock_bodies_is_422_and_changes_nothing(self, client, engine, seeded, body):
        response = client.put("/api/sessions/wa-15550001111/lock", json=body, headers=A)
        assert_clean_refusal(response, 422)
        assert snapshot(engine) == seeded and tables_exist(engine)


class TestWebhook:
    def test_signature_over_another_body_is_401(self, client, engine, graph):
        body = raw(delivery([change([text("hello", "wamid.H1")])]))
        other = raw(delivery([change([text("hellp", "wamid.H1")])]))
        response = client.post(PATH, content=body, headers={**signed(other)})
        assert_clean_refusal(response, 401)
        assert snapshot(engine)["conversation_messages"] == [] and graph.requests == []

    def test_a_replayed_delivery_is_a_no_op(self, client, engine, graph):
        payload = delivery([change([text("hello", "wamid.H2")])])
        first, replay = post(client, payload), post(client, payload)
        assert first.json()["stored"] == 1
        assert (replay.status_code, replay.json()["duplicates"], replay.json()["stored"]) == (200, 1, 0)
        assert len(graph.sent) == 1 and len(snapshot(engine)["conversation_messages"]) == 2

    def test_a_message_older_than_the_max_age_is_acknowledged_and_ignored(self, client, engine, graph):
        old = str(int(time.time()) - 7 * 24 * 3600 - 60)
        response = post(client, delivery([change([text("hello", "wamid.H3", ts=old)])]))
        assert (response.status_code, response.json()["ignored"]) == (200, 1)
        assert snapshot(engine)["conversation_messages"] == [] and graph.requests == []

    @pytest.mark.parametrize(
        ("where", "value"),
        [
            ("text", b"a\\u0000b"),
            ("text", b"a\\ud800b"),
            ("text", b"a\xed\xa0\x80b"),
            ("id", b"wamid.\\u0000"),
            ("id", b"wamid.\\ud800"),
        ],
    )
    def test_a_message_postgresql_cannot_store_does_not_make_meta_retry_forever(
        self, client, engine, graph, where, value
    ):
        # Meta escapes non-ASCII as \uXXXX: NUL and lone surrogates arrive as valid, signed JSON.
        first = text("PLACEHOLDER" if where == "text" else "hello", "PLACEHOLDER" if where == "id" else "wamid.H4")
        body = raw(delivery([change([first, text("after it", "wamid.H5")])])).replace(b"PLACEHOLDER", value)
        response = client.post(PATH, content=body, headers=signed(body))
        # A 5xx makes Meta deliver the batch again, with the same result, for days; the message after it waits.
        assert response.status_code == 200, response.text
        with engine.begin() as conn:
            later = (
                conn.exec_driver_sql(
                    "SELECT status FROM conversation_messages WHERE role = 'user' AND content = 'after it'"
                )
                .scalars()
                .all()
            )
        assert later == ["done"] and len(graph.sent) == 1  # the message after it is answered, once


class TestCron:
    @pytest.mark.parametrize("secret", [CRON_SECRET[:-1], CRON_SECRET[:8], CRON_SECRET + "x", "", CRON_SECRET.upper()])
    def test_anything_but_the_whole_secret_is_401(self, client, engine, secret):
        response = client.get("/api/cron/cleanup", headers={"Authorization": f"Bearer {secret}"})
        assert_clean_refusal(response, 401)
        assert snapshot(engine)["cleanup_runs"] == []
        assert client.get("/api/cron/cleanup", headers={"Authorization": f"Bearer {CRON_SECRET}"}).status_code == 200

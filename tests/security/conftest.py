"""Fixtures of the security tests: the real app with every secret set, a local Graph API, and raw requests."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from tests.channels.payloads import whatsapp_settings
from tests.utils.apps import app_client

KEY_A = "acme-admin-key-5e2d8c1f9b"
KEY_B = "globex-admin-key-3a7f0c6e24"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
ADMIN_KEYS = f"acme:{KEY_A},globex:{KEY_B}"
CRON_SECRET = "cron-secret-for-security-tests-91c4"
DEVICE = "3f1c2b4a-5d6e-4f70-8a9b-0c1d2e3f4a5b"
TABLES = (
    "conversation_states",
    "conversation_messages",
    "conversation_audit",
    "cleanup_runs",
    "erased_channel_messages",
)


def hardened_settings(database_url: str, graph_url: str = "http://127.0.0.1:9", **overrides):
    """Every secret set, outbound calls to a local address."""
    values = {"admin_api_keys": ADMIN_KEYS, "cron_secret": CRON_SECRET, "web_tenants": "default,acme,globex"}
    return whatsapp_settings(database_url, graph_url, **(values | overrides))


@pytest.fixture
def client(database_url, engine, graph):
    with app_client(hardened_settings(database_url, graph.url)) as client:
        yield client


def assert_clean_refusal(response, *statuses: int) -> None:
    """A 4xx (one of statuses, if given) with the JSON error shape and no stack trace."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if statuses:
        assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert "Traceback" not in response.text
    error = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)


def raw_http(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send bytes as they are (no client-side header checks) and return (status, whole response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while len(data) < 1_000_000:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
    status_line = data.split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), data


def asgi_call(app, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> tuple[int, bytes]:
    """Call the ASGI app directly with header bytes no HTTP client would send (as a Lambda adapter might)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    messages: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")

"""GET /api/chat/events: the device's own event stream, under the same device rules as the other chat routes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from app import devices
from tests.utils.agents import wait_for
from tests.utils.server import Server, app_env, running_app

SECRET = "chat-events-device-secret"
ADMIN_KEY = "chat-events-api-admin-key-3c9e"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def server(direct_url: str) -> Iterator[Server]:
    env = app_env(
        direct_url, device_id_secret=SECRET, web_tenants="default,acme", admin_api_keys=f"default:{ADMIN_KEY}"
    )
    with running_app(env) as server:
        yield server


def events(response: httpx.Response) -> Iterator[dict]:
    """The data of each `changed` event of an open stream, as they come."""
    name = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: ") and name == "changed":
            yield json.loads(line[len("data: ") :])


def test_the_stream_says_at_once_what_the_page_shows_then_each_change(server, engine):
    device = devices.issue(SECRET)
    headers = {"X-Device-ID": device}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post("/api/chat", json={"message": "I need to book an appointment"}, headers=headers)
        assert answer.status_code == 200
        with client.stream("GET", "/api/chat/events", headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            seen = events(response)
            first = next(seen)
            assert first["lock"]["agent"] == "scheduling" and first["newest"] > 0
            assert first["lock"] == answer.json()["lock"]  # the same expiry, in the same text form (a Z)
            uuid = device.split(".")[0]
            assert (
                client.post(f"/api/sessions/{uuid}/takeover", json={"operator": "Ana"}, headers=ADMIN).status_code
                == 200
            )
            second = next(seen)
            assert second["lock"]["agent"] == "human" and second["newest"] == first["newest"]
            reply = client.post(f"/api/sessions/{uuid}/messages", json={"text": "Ana here"}, headers=ADMIN)
            assert reply.status_code == 201
            third = next(seen)
            assert third["newest"] == reply.json()["id"] and third["lock"]["agent"] == "human"


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 400, "missing_device_id"),
        ({"X-Device-ID": "not-a-device"}, 401, "invalid_device_signature"),
        ({"X-Device-ID": "9b2f4a1e-0c3d-4e5f-8a7b-6c5d4e3f2a1b"}, 401, "invalid_device_signature"),  # unsigned
        ({"X-Device-ID": devices.issue(SECRET, "acme")}, 401, "invalid_device_signature"),  # another tenant's
        ({"X-Device-ID": devices.issue(SECRET), "X-Tenant-ID": "nobody"}, 400, "unknown_tenant"),
    ],
)
def test_a_device_the_chat_routes_refuse_gets_no_stream(server, headers, status, code):
    response = httpx.get(f"{server.url}/api/chat/events", headers=headers, timeout=30)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_a_stream_ends_after_events_stream_seconds(direct_url, engine):
    device = devices.issue(SECRET)
    env = app_env(direct_url, device_id_secret=SECRET, events_stream_seconds=1)
    with running_app(env) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("GET", "/api/chat/events", headers={"X-Device-ID": device}) as response:
            assert response.status_code == 200
            changes = list(events(response))  # the body ends: the server closed the stream
    assert changes == [{"newest": None, "lock": {"agent": None, "expires_at": None}}]


def test_a_device_past_event_streams_per_device_gets_429_until_one_of_its_streams_closes(direct_url, engine):
    # Each stream asks the database every 2 s: one device opening hundreds cost 250 transactions a second.
    device, other = devices.issue(SECRET), devices.issue(SECRET)
    env = app_env(direct_url, device_id_secret=SECRET, event_streams_per_device=2)
    with running_app(env) as server, httpx.Client(base_url=server.url, timeout=30) as client, ExitStack() as opened:
        following: list[Iterator[dict]] = []

        def open_stream(device_id: str) -> httpx.Response:
            response = opened.enter_context(
                client.stream("GET", "/api/chat/events", headers={"X-Device-ID": device_id})
            )
            if response.status_code == 200:
                following.append(events(response))  # dropped, the generator would close the response
                next(following[-1])  # the server runs it (its first event came)
            return response

        first = open_stream(device)
        assert open_stream(device).status_code == 200
        refused = open_stream(device)
        refused.read()
        assert (refused.status_code, refused.json()["error"]["code"]) == (429, "too_many_streams")
        assert refused.headers["Retry-After"] == "5"
        assert open_stream(other).status_code == 200  # counted by device
        first.close()  # the page went away: the server sees the disconnect and lets one more in

        def reopened() -> bool:
            response = open_stream(device)
            response.read() if response.status_code != 200 else None
            return response.status_code == 200

        assert wait_for(reopened, 20), "the closed stream was never counted out"

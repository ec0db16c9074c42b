"""Served under a root path (`uvicorn --root-path /bot`, a proxy setting scope["root_path"]), the app's
own middlewares match route paths: the body limits and the admission of turns still apply."""

from __future__ import annotations

import json
import threading
import uuid

import httpx
import pytest

from app.api.paths import route_path
from tests.conftest import make_settings
from tests.utils.agents import wait_for
from tests.utils.apps import app_client, use_registry
from tests.utils.slow_agents import Slow

ROOT = "/bot"
WAIT_SECONDS = 60.0  # a bound on the test, never a measure of speed


def device() -> dict[str, str]:
    return {"X-Device-ID": str(uuid.uuid4())}


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("/bot/api/chat", "/bot", "/api/chat"),
        ("/api/chat", "", "/api/chat"),
        ("/bot", "/bot", ""),
        ("/botany/api/chat", "/bot", "/botany/api/chat"),  # not under the root path: a prefix of a segment
        ("/api/chat", "/bot", "/api/chat"),  # a server that left the root path out of the path
    ],
)
def test_the_route_path_is_the_path_without_the_root_path(path, root, expected):
    assert route_path({"type": "http", "path": path, "root_path": root}) == expected


def test_a_body_over_the_routes_limit_is_413_under_a_root_path(database_url):
    # 65 KiB: over /api/chat's 64 KiB, under the 256 KiB every other path gets.
    body = json.dumps({"message": "x" * (65 * 1024)}).encode()
    with app_client(make_settings(database_url), root_path=ROOT) as client:
        use_registry(client, {"manager": Slow()})
        assert client.post(f"{ROOT}/api/chat", json={"message": "hello"}, headers=device()).status_code == 200
        response = client.post(
            f"{ROOT}/api/chat", content=body, headers={**device(), "Content-Type": "application/json"}
        )
    assert response.status_code == 413, response.text
    assert response.json() == {
        "error": {"code": "payload_too_large", "message": f"request body is larger than {64 * 1024} bytes"}
    }


def test_a_turn_waits_for_its_place_under_a_root_path(database_url):
    with app_client(make_settings(database_url, admission_width=1), root_path=ROOT) as client:
        use_registry(client, {"manager": Slow()})
        admission = client.services.runtime.admission
        release = client.portal.call(admission.admit)  # the only place, held by the test
        answered: dict[str, httpx.Response] = {}
        poster = threading.Thread(
            target=lambda: answered.setdefault(
                "chat", client.post(f"{ROOT}/api/chat", json={"message": "hello"}, headers=device())
            )
        )
        poster.start()
        # Queued for the place; not admitted, its answer would come while the test holds it.
        assert wait_for(lambda: len(admission._waiting) == 1 or not poster.is_alive(), WAIT_SECONDS)
        assert len(admission._waiting) == 1 and poster.is_alive(), answered
        client.portal.call(release)
        poster.join(WAIT_SECONDS)
    assert (answered["chat"].status_code, answered["chat"].json()["reply"]) == (200, "slow: hello attempt=1")

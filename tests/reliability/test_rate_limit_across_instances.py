"""The per-device message limit holds across app instances: it is counted in PostgreSQL."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.utils.server import app_env, running_app

pytestmark = pytest.mark.slow

LIMIT = 30


def test_the_31st_message_in_a_minute_is_429_whichever_instance_gets_it(database_url, engine):
    device = str(uuid.uuid4())
    env = app_env(database_url, rate_limit_per_device=LIMIT)
    with running_app(env) as one, running_app(env) as two, httpx.Client(timeout=30) as client:

        def post(server, n: int) -> httpx.Response:
            return client.post(
                f"{server.url}/api/chat",
                json={"message": f"message {n}"},
                headers={"X-Device-ID": device, "Idempotency-Key": f"key-{n}"},
            )

        answered = [post((one, two)[n % 2], n) for n in range(LIMIT)]
        assert [response.status_code for response in answered] == [200] * LIMIT
        refused = post(two, LIMIT)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        refused_too = post(one, LIMIT + 1)
        assert refused_too.status_code == 429
        # A retry of a message already stored is answered, not refused.
        retry = post(one, 3)
        assert retry.status_code == 200, retry.text
        assert retry.json()["reply"] == answered[3].json()["reply"]
    with engine.begin() as conn:
        stored = (
            conn.exec_driver_sql(
                "SELECT content FROM conversation_messages WHERE device_id = %(d)s AND role = 'user' ORDER BY id",
                {"d": device},
            )
            .scalars()
            .all()
        )
    assert stored == [f"message {n}" for n in range(LIMIT)]

"""Abuse limits counted in PostgreSQL: messages per device, new device ids per client address."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.cleanup import run_cleanup
from app.errors import RateLimited
from app.ledger import Ledger
from tests.conftest import make_settings
from tests.utils import aio
from tests.utils.apps import app_client

DEVICE = "2d4f6a8c-1b3e-4a5c-9d7f-0e2a4c6e8a1b"


def chat(client, message: str, device: str = DEVICE, key: str | None = None):
    headers = {"X-Device-ID": device} | ({"Idempotency-Key": key} if key else {})
    return client.post("/api/chat", json={"message": message}, headers=headers)


def inbound(engine, device: str = DEVICE) -> list[str]:
    with engine.begin() as conn:
        return (
            conn.exec_driver_sql(
                "SELECT content FROM conversation_messages WHERE device_id = %(d)s AND role = 'user' ORDER BY id",
                {"d": device},
            )
            .scalars()
            .all()
        )


def assert_limited(response) -> int:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    return retry_after


@pytest.fixture
def limited(database_url, engine):
    with app_client(make_settings(database_url, rate_limit_per_device=3, rate_limit_new_devices=2)) as client:
        yield client


class TestMessagesPerDevice:
    def test_past_the_limit_is_429_and_nothing_is_stored(self, limited, engine):
        for n in range(3):
            assert chat(limited, f"m{n}").status_code == 200
        assert_limited(chat(limited, "one too many"))
        assert inbound(engine) == ["m0", "m1", "m2"]
        # Another device has its own count.
        assert chat(limited, "hello", device=str(uuid.uuid4())).status_code == 200

    def test_an_idempotent_retry_of_a_stored_message_is_not_refused_nor_counted(self, limited, engine):
        first = chat(limited, "m0", key="k0")
        for n in range(1, 3):
            assert chat(limited, f"m{n}", key=f"k{n}").status_code == 200
        for _ in range(3):
            again = chat(limited, "m0", key="k0")
            assert again.status_code == 200, again.text
            assert again.json()["reply"] == first.json()["reply"]
        assert_limited(chat(limited, "m3", key="k3"))
        assert inbound(engine) == ["m0", "m1", "m2"]

    def test_the_ledger_raises_a_typed_error_with_the_wait(self, engine):
        ledger = Ledger(engine, lease_seconds=30, default_ttl=86400, context_cap=20, rate_limit=1)
        aio.run(ledger.claim, "default", DEVICE, "first", external_id=None, metadata={})
        with pytest.raises(RateLimited) as refused:
            aio.run(ledger.claim, "default", DEVICE, "second", external_id=None, metadata={})
        assert 1 <= refused.value.retry_after <= 60
        assert inbound(engine) == ["first"]

    def test_zero_turns_the_limit_off(self, database_url, engine):
        with app_client(make_settings(database_url, rate_limit_per_device=0)) as client:
            for n in range(40):
                assert chat(client, f"m{n}").status_code == 200
        assert len(inbound(engine)) == 40


class TestNewDevicesPerAddress:
    def test_past_the_limit_is_429(self, limited):
        for _ in range(2):
            assert limited.post("/api/devices").status_code == 201
        assert_limited(limited.post("/api/devices"))

    def test_zero_turns_the_limit_off(self, database_url, engine):
        with app_client(make_settings(database_url, rate_limit_new_devices=0)) as client:
            for _ in range(30):
                assert client.post("/api/devices").status_code == 201

    def test_the_limit_is_per_address_and_shared_by_instances(self, database_url, engine):
        settings = make_settings(database_url, rate_limit_new_devices=2)
        with app_client(settings) as one, app_client(settings) as two:
            assert one.post("/api/devices").status_code == 201
            assert two.post("/api/devices").status_code == 201
            assert_limited(one.post("/api/devices"))
        with app_client(settings, peer=("203.0.113.9", 50000)) as elsewhere:
            assert elsewhere.post("/api/devices").status_code == 201

    def test_the_cleanup_run_deletes_windows_that_are_over(self, settings, engine):
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO rate_limit_windows (scope, key, window_start, hits) VALUES "
                "('new_devices', '198.51.100.1', now() - interval '61 seconds', 5), "
                "('new_devices', '198.51.100.2', now() - interval '10 seconds', 5)"
            )
        run_cleanup(engine, settings)
        with engine.begin() as conn:
            keys = conn.exec_driver_sql("SELECT key FROM rate_limit_windows").scalars().all()
        assert keys == ["198.51.100.2"]


def test_concurrent_messages_of_one_device_never_pass_the_limit(engine):
    ledger = Ledger(engine, lease_seconds=30, default_ttl=86400, context_cap=20, rate_limit=5)
    start = threading.Barrier(12)

    def claim(n: int) -> str:
        start.wait()
        try:
            aio.run(ledger.claim, "default", DEVICE, f"m{n}", external_id=None, metadata={})
        except RateLimited:
            return "limited"
        return "stored"

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(claim, range(12)))
    assert outcomes.count("stored") == 5 and outcomes.count("limited") == 7
    assert len(inbound(engine)) == 5

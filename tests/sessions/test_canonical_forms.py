"""One form for ids and times: any spelling of a device UUID finds the stored one; every time is UTC with a Z."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from app.core import migrate
from tests.conftest import make_settings
from tests.sessions.conftest import ADMIN_KEYS, A
from tests.utils.apps import app_client
from tests.utils.factories import make_audit, make_exchange, make_state
from tests.utils.postgres import scratch_database

DEVICE = "9b2e4f6a-1c3d-4e5f-8a7b-6c5d4e3f2a1b"
SPELLINGS = [DEVICE.upper(), "{" + DEVICE + "}", "urn:uuid:" + DEVICE, "{" + DEVICE.upper() + "}"]
UTC_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
TIME_KEYS = ("_at", "expires_at")


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_admin_routes_canonicalise_device_uuids(client, engine, spelling):
    make_state(engine, DEVICE, "acme", agent="scheduling")
    make_exchange(engine, DEVICE, "acme")
    make_audit(engine, DEVICE, "acme")
    for path in ("", "/history", "/messages", "/audit", "/export"):
        response = client.get(f"/api/sessions/{spelling}{path}", headers=A)
        assert response.status_code == 200, (path, response.text)
    assert client.get(f"/api/sessions/{spelling}", headers=A).json()["device_id"] == DEVICE
    assert client.put(f"/api/sessions/{spelling}/lock", json={"agent": "billing"}, headers=A).status_code == 200
    assert client.get(f"/api/sessions/{DEVICE}", headers=A).json()["lock"]["agent"] == "billing"


def test_other_device_ids_are_kept_as_given(client, engine):
    make_state(engine, "15551230001", "acme")
    assert client.get("/api/sessions/15551230001", headers=A).status_code == 200
    assert client.get("/api/sessions/DEVICE-X", headers=A).status_code == 404


@pytest.fixture
def kolkata_url(pg_server: str) -> Iterator[str]:
    """A migrated database whose sessions default to TimeZone Asia/Kolkata (+05:30)."""
    with scratch_database(pg_server, prefix="tz") as url:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            name = conn.exec_driver_sql("SELECT current_database()").scalar()
            conn.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET timezone = 'Asia/Kolkata'")
        migrate.upgrade(engine)
        engine.dispose()
        yield url


def times(value, where: str = "") -> Iterator[tuple[str, str]]:
    """Every (path, text) of a JSON document whose key names a time."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and key.endswith(TIME_KEYS):
                yield f"{where}.{key}", item
            yield from times(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from times(item, f"{where}[{index}]")


def test_every_time_in_responses_is_utc_with_z_whatever_the_session_time_zone(kolkata_url: str):
    settings = make_settings(kolkata_url, admin_api_keys=ADMIN_KEYS, web_tenants="default,acme", db_pool="queue")
    with app_client(settings) as client:
        engine = client.services.database.engine
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW timezone").scalar() == "Asia/Kolkata"
        chat = client.post(
            "/api/chat", json={"message": "book"}, headers={"X-Device-ID": DEVICE, "X-Tenant-ID": "acme"}
        )
        assert chat.status_code == 200 and chat.json()["lock"]["agent"] == "scheduling"
        documents = {"chat": chat.json()}
        for path in (
            "/api/sessions",
            f"/api/sessions/{DEVICE}",
            f"/api/sessions/{DEVICE}/history",
            f"/api/sessions/{DEVICE}/messages",
            f"/api/sessions/{DEVICE}/audit",
            f"/api/sessions/{DEVICE}/export",
            "/api/stats",
        ):
            response = client.get(path, headers=A)
            assert response.status_code == 200, (path, response.text)
            documents[path] = response.json()
    found = [(name, where, text) for name, document in documents.items() for where, text in times(document)]
    assert len(found) >= 10  # the lock, the session, messages, audit rows and the export all carry times
    assert [item for item in found if not UTC_Z.match(item[2])] == []

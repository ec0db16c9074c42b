"""Tenants of anonymous web clients: only those WEB_TENANTS lists, and a signed device id binds its tenant."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

import pytest

from tests.conftest import make_settings
from tests.utils.apps import app_client

SECRET = "s3cret-device-key"


def rows(engine, table: str) -> int:
    with engine.begin() as conn:
        return conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()


def chat(client, device: str, tenant: str | None = None, message: str = "hi"):
    headers = {"X-Device-ID": device} | ({"X-Tenant-ID": tenant} if tenant is not None else {})
    return client.post("/api/chat", json={"message": message}, headers=headers)


def legacy_id(secret: str) -> str:
    """A device id signed the way it was before ids were bound to a tenant: HMAC of the uuid alone."""
    device_uuid = str(uuid.uuid4())
    digest = hmac.new(secret.encode(), device_uuid.encode(), hashlib.sha256).digest()
    return f"{device_uuid}.{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"


@pytest.fixture
def plain(database_url, engine):
    with app_client(make_settings(database_url, web_tenants="default,acme")) as client:
        yield client


@pytest.fixture
def signed(database_url, engine):
    with app_client(make_settings(database_url, web_tenants="default,acme", device_id_secret=SECRET)) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/chat"),
        ("POST", "/api/chat/new"),
        ("GET", "/api/chat/messages"),
        ("GET", "/api/chat/sessions"),
        ("DELETE", "/api/chat/history"),
        ("POST", "/api/devices"),
    ],
)
def test_an_unlisted_tenant_is_400_and_stores_nothing(plain, engine, method, path):
    body = {"message": "hi"} if path == "/api/chat" else None
    headers = {"X-Device-ID": str(uuid.uuid4()), "X-Tenant-ID": "intruder"}
    response = plain.request(method, path, json=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_tenant"
    assert (rows(engine, "conversation_states"), rows(engine, "conversation_messages")) == (0, 0)


def test_a_hundred_invented_tenants_make_no_tenant(plain, engine):
    for number in range(100):
        assert chat(plain, str(uuid.uuid4()), f"tenant-{number}").status_code == 400
    with engine.begin() as conn:
        tenants = conn.exec_driver_sql("SELECT DISTINCT tenant_id FROM conversation_states").scalars().all()
    assert tenants == []


def test_the_listed_second_tenant_chats_in_its_own_tenant(plain, engine):
    device = str(uuid.uuid4())
    assert chat(plain, device, "acme").status_code == 200
    assert chat(plain, device).status_code == 200  # no header: the default tenant
    with engine.begin() as conn:
        tenants = (
            conn.exec_driver_sql("SELECT tenant_id FROM conversation_messages WHERE role = 'user' ORDER BY id")
            .scalars()
            .all()
        )
    assert tenants == ["acme", "default"]


def test_a_signed_id_works_only_under_the_tenant_it_was_issued_for(signed, engine):
    issued = signed.post("/api/devices", headers={"X-Tenant-ID": "acme"})
    assert issued.status_code == 201
    device = issued.json()["device_id"]
    assert chat(signed, device, "acme").status_code == 200
    for other in ("default", None):
        refused = chat(signed, device, other)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_device_signature"
    assert signed.get("/api/chat/messages", headers={"X-Device-ID": device}).status_code == 401
    with engine.begin() as conn:
        stored = conn.exec_driver_sql(
            "SELECT tenant_id, count(*) FROM conversation_messages WHERE role = 'user' GROUP BY tenant_id"
        ).all()
    assert [tuple(row) for row in stored] == [("acme", 1)]


def test_a_default_tenant_id_is_refused_under_the_second_tenant(signed, engine):
    device = signed.post("/api/devices").json()["device_id"]
    assert chat(signed, device).status_code == 200
    assert chat(signed, device, "acme").status_code == 401
    assert rows(engine, "conversation_messages") == 2  # the default tenant's message and its reply


def test_an_id_signed_before_tenants_were_bound_works_only_in_the_default_tenant(signed, engine):
    device = legacy_id(SECRET)
    assert chat(signed, device).status_code == 200
    refused = chat(signed, device, "acme")
    assert refused.status_code == 401
    assert "POST /api/devices" in refused.json()["error"]["message"]
    with engine.begin() as conn:
        tenants = conn.exec_driver_sql("SELECT DISTINCT tenant_id FROM conversation_states").scalars().all()
    assert tenants == ["default"]


def test_web_tenants_are_checked_at_start(database_url):
    with pytest.raises(ValueError, match="WEB_TENANTS"):
        make_settings(database_url, web_tenants="default,has space")
    with pytest.raises(ValueError, match="WEB_TENANTS"):
        make_settings(database_url, web_tenants=" , ")
    assert make_settings(database_url).web_tenants == ("default",)
    assert make_settings(database_url, web_tenants=" acme , default,acme").web_tenants == ("acme", "default")

"""Signed device ids: with DEVICE_ID_SECRET, only ids issued by POST /api/devices may chat."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import make_settings
from tests.utils.apps import app_client


@pytest.fixture
def signed(database_url, engine):
    with app_client(make_settings(database_url, device_id_secret="s3cret-device-key")) as client:
        yield client


def chat(client, device, message="hi"):
    return client.post("/api/chat", json={"message": message}, headers={"X-Device-ID": device})


def test_issued_id_chats_and_keeps_its_conversation(signed, engine):
    issued = signed.post("/api/devices")
    assert issued.status_code == 201
    device = issued.json()["device_id"]
    device_uuid, _, tag = device.partition(".")
    assert str(uuid.UUID(device_uuid)) == device_uuid and len(tag) >= 40
    assert chat(signed, device, "book an appointment").json()["lock"]["agent"] == "scheduling"
    body = chat(signed, device, "monday").json()
    assert (body["agent"], body["device_id"]) == ("scheduling", device_uuid)


@pytest.mark.parametrize("forge", ["plain", "no_tag", "wrong_tag", "other_uuid", "upper"])
def test_unsigned_or_forged_ids_are_401(signed, engine, forge):
    device = signed.post("/api/devices").json()["device_id"]
    device_uuid, _, tag = device.partition(".")
    forged = {
        "plain": device_uuid,
        "no_tag": f"{device_uuid}.",
        "wrong_tag": f"{device_uuid}.{tag[:-1]}{'A' if tag[-1] != 'A' else 'B'}",
        "other_uuid": f"{uuid.uuid4()}.{tag}",
        "upper": f"{device_uuid.upper()}.{tag}",
    }[forge]
    response = chat(signed, forged)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_device_signature"
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM conversation_messages").scalar() == 0


def test_new_conversation_needs_a_signed_id_too(signed):
    assert signed.post("/api/chat/new", headers={"X-Device-ID": str(uuid.uuid4())}).status_code == 401
    device = signed.post("/api/devices").json()["device_id"]
    assert signed.post("/api/chat/new", headers={"X-Device-ID": device}).status_code == 201


def test_without_secret_plain_uuids_work_and_devices_are_plain(settings, engine):
    with app_client(settings) as client:
        device = client.post("/api/devices").json()["device_id"]
        assert str(uuid.UUID(device)) == device
        assert chat(client, device).status_code == 200

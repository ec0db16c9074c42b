"""Deduplication outlives erasure: a signed delivery replayed after its device was erased is a duplicate."""

from __future__ import annotations

import pytest

from app.chat_history import ChatHistory
from app.cleanup import run_cleanup
from app.erasure import ReplayGuard
from tests.channels.conftest import wa_settings
from tests.channels.payloads import PHONE_ID_2, USER, USER_2, change, delivery, post, rows, text
from tests.utils.agents import Scripted
from tests.utils.apps import app_client, use_registry
from tests.utils.factories import scalar

KEY = "whatsapp-erasure-key-3b9f1d"
ADMIN = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def client(database_url, engine, graph):
    settings = wa_settings(
        database_url,
        graph,
        admin_api_keys=f"default:{KEY},globex:{KEY}-globex",
        whatsapp_tenants={PHONE_ID_2: "globex"},
    )
    with app_client(settings) as client:
        use_registry(client, {"manager": Scripted("manager")})
        yield client


def kept(engine) -> list[dict]:
    with engine.begin() as conn:
        return [dict(r) for r in conn.exec_driver_sql("SELECT * FROM erased_channel_messages").mappings()]


def erase(client, device: str = USER) -> None:
    assert client.delete(f"/api/sessions/{device}", headers=ADMIN).status_code == 204


def test_a_delivery_replayed_after_an_admin_erase_is_a_duplicate(client, graph, engine):
    payload = delivery([change([text("my secret question", "wamid.E1")])])
    assert post(client, payload).json()["stored"] == 1
    assert [s["text"]["body"] for s in graph.sent] == ["manager: my secret question"]
    erase(client)
    response = post(client, payload)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "stored": 0, "duplicates": 1, "ignored": 0}
    assert len(graph.sent) == 1 and rows(engine) == []


def test_the_kept_hashes_hold_no_phone_number_content_or_message_id(client, engine):
    post(client, delivery([change([text("my secret question", "wamid.E2")])]))
    erase(client)
    (row,) = kept(engine)
    stored = repr(row) + row["message_hash"].hex()
    for secret in (USER, "my secret question", "wamid.E2", USER.encode().hex()):
        assert secret not in stored
    assert scalar(engine, "SELECT expires_at > now() + interval '6 days' FROM erased_channel_messages")


def test_a_new_message_of_the_erased_device_is_answered(client, graph, engine):
    post(client, delivery([change([text("first", "wamid.E3")])]))
    erase(client)
    assert post(client, delivery([change([text("second", "wamid.E4")])])).json()["stored"] == 1
    assert [s["text"]["body"] for s in graph.sent] == ["manager: first", "manager: second"]


def test_the_hash_is_per_tenant(client, graph, engine):
    """An erased message id of one tenant does not silence the same id arriving for another."""
    post(client, delivery([change([text("hi", "wamid.E5", sender=USER_2)])]))
    erase(client, USER_2)
    same_id_other_tenant = delivery([change([text("hi", "wamid.E5", sender=USER_2)], phone_number_id=PHONE_ID_2)])
    assert post(client, same_id_other_tenant).json()["stored"] == 1


def test_a_history_erase_keeps_the_hashes_too(client, graph, engine):
    payload = delivery([change([text("hi", "wamid.E6")])])
    post(client, payload)
    ChatHistory(engine, ReplayGuard.of(client.services.settings)).erase("default", USER)
    assert rows(engine) == [] and len(kept(engine)) == 1
    assert post(client, payload).json()["duplicates"] == 1
    assert len(graph.sent) == 1


def test_the_cleanup_deletes_expired_hashes(client, engine):
    for mid in ("wamid.E7", "wamid.E8"):
        post(client, delivery([change([text("hi", mid)])]))
    erase(client)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE erased_channel_messages SET expires_at = now() - interval '1 second' "
            "WHERE message_hash = (SELECT message_hash FROM erased_channel_messages ORDER BY 1 LIMIT 1)"
        )
    run_cleanup(engine, client.services.settings)
    assert len(kept(engine)) == 1


def test_deleting_one_session_keeps_its_hashes_too(client, graph, engine):
    payload = delivery([change([text("hi", "wamid.E9")])])
    post(client, payload)
    session = scalar(engine, "SELECT session_id FROM conversation_messages WHERE role = 'user'")
    assert ChatHistory(engine, ReplayGuard.of(client.services.settings)).delete_session("default", USER, session)
    assert len(kept(engine)) == 1
    assert post(client, payload).json()["duplicates"] == 1
    assert len(graph.sent) == 1

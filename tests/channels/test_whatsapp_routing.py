"""Where a WhatsApp message goes comes from the configuration and the device, never from stored metadata.

Two tenants, each with its own business number (WHATSAPP_TENANTS). Tenant acme's admin
key imports a forged device whose messages name globex's number and any phone: nothing
of it may reach the Graph API from globex's number, whatever path sends it (operator
reply, template, the bot's reply to an imported pending message, the cleanup's retries).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.channels.whatsapp import send_to_device
from app.cleanup import scheduled_cleanup
from tests.channels.conftest import wa_settings
from tests.channels.payloads import BSUID, PHONE_ID, PHONE_ID_2, USER, change, delivery, post, rows, text
from tests.sessions.conftest import ADMIN_KEYS, A
from tests.utils import aio
from tests.utils.agents import Scripted
from tests.utils.apps import app_client, use_registry
from tests.utils.factories import make_message

VICTIM = "15557770001"  # a phone that never wrote to acme's number
TENANTS = {PHONE_ID: "acme", PHONE_ID_2: "globex"}


@pytest.fixture
def client(database_url, engine, graph):
    settings = wa_settings(database_url, graph, admin_api_keys=ADMIN_KEYS, whatsapp_tenants=TENANTS)
    with app_client(settings) as client:
        use_registry(client, {"manager": Scripted("manager")})
        yield client


def forged(device: str, *, status: str = "done", phone_number_id: str = PHONE_ID_2) -> dict:
    """An export document whose one user message claims to have come in on phone_number_id."""
    now = datetime.now(UTC).isoformat()
    routing = {"channel": "whatsapp", "phone_number_id": phone_number_id, "to": VICTIM, "wa_message_id": "wamid.F1"}
    message = {
        "id": 1,
        "role": "user",
        "content": "hi",
        "agent": None,
        "external_id": "wa:wamid.F1",
        "status": status,
        "reply_to": None,
        "tools_used": [],
        "processing_time_ms": None,
        "has_error": False,
        "error_message": None,
        "metadata": routing,
        "created_at": now,
        "sent_at": now,
        "session_id": "sess_forged",
    }
    state = {
        "session_id": "sess_forged",
        "session_started_at": now,
        "last_activity_at": now,
        "lock": None,
        "session_ttl": 86400,
        "context": {},
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
    return {
        "kind": "agent-sessions.export",
        "format_version": 1,
        "device_id": device,
        "state": state,
        "messages": [message],
        "audit": [],
    }


def import_forged(client, device: str = VICTIM, **kwargs) -> dict:
    response = client.post("/api/sessions/import", json=forged(device, **kwargs), headers=A)
    assert response.status_code == 201, response.text
    return response.json()


def take_over(client, device: str) -> None:
    response = client.post(f"/api/sessions/{device}/takeover", json={"operator": "Ana"}, headers=A)
    assert response.status_code == 200, response.text


def sends_from(graph, phone_number_id: str) -> list:
    return [r for r in graph.requests if f"/{phone_number_id}/" in r.path]


class TestImportedRouting:
    def test_import_drops_channel_routing_metadata_and_says_so(self, client, engine):
        result = import_forged(client)
        assert result["dropped_metadata"] == 1
        assert [r["metadata"] for r in rows(engine)] == [{}]

    def test_an_operator_reply_to_a_forged_import_is_not_sent(self, client, graph):
        import_forged(client)
        take_over(client, VICTIM)
        response = client.post(f"/api/sessions/{VICTIM}/messages", json={"text": "hello"}, headers=A)
        assert response.status_code == 201, response.text
        assert (response.json()["channel"], response.json()["delivery"]) == ("web", None)
        assert graph.requests == []

    def test_a_template_to_a_forged_import_is_refused(self, client, graph):
        import_forged(client)
        take_over(client, VICTIM)
        response = client.post(f"/api/sessions/{VICTIM}/messages", json={"template": {"name": "hello"}}, headers=A)
        assert response.status_code == 422 and response.json()["error"]["code"] == "template_needs_whatsapp"
        assert graph.requests == []

    def test_an_imported_pending_message_is_answered_but_not_sent(self, client, graph, engine):
        import_forged(client, status="pending")
        scheduled_cleanup(client.services)
        assert [(r["role"], r["status"]) for r in rows(engine)] == [("user", "done"), ("assistant", None)]
        assert graph.requests == []


class TestStoredMetadataIsNotAnAddress:
    """Stored metadata written some other way than import still cannot pick the number or the phone."""

    def test_a_reply_goes_from_the_tenants_number_to_the_device_itself(self, client, graph, engine):
        post(client, delivery([change([text("hi", "wamid.R1")])]))  # USER writes to acme's number
        with engine.begin() as conn:  # the stored inbound now names another phone
            conn.exec_driver_sql(
                "UPDATE conversation_messages SET metadata = metadata || %(m)s::jsonb WHERE role = 'user'",
                {"m": f'{{"to": "{VICTIM}"}}'},
            )
        take_over(client, USER)
        response = client.post(f"/api/sessions/{USER}/messages", json={"text": "Ana here"}, headers=A)
        assert response.json()["delivery"] == "sent", response.text
        assert [(r.path.split("/")[2], r.json["to"]) for r in graph.messages] == [(PHONE_ID, USER), (PHONE_ID, USER)]

    def test_another_tenants_number_in_stored_metadata_sends_nothing(self, client, graph, engine):
        post(client, delivery([change([text("hi", "wamid.R2")])]))
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE conversation_messages SET metadata = metadata || %(m)s::jsonb WHERE role = 'user'",
                {"m": f'{{"phone_number_id": "{PHONE_ID_2}"}}'},
            )
        take_over(client, USER)
        for body in ({"text": "Ana here"}, {"template": {"name": "hello"}}):
            response = client.post(f"/api/sessions/{USER}/messages", json=body, headers=A)
            assert response.json()["delivery"] == "failed", response.text
        assert sends_from(graph, PHONE_ID_2) == []
        assert len(graph.messages) == 1  # the bot's reply to "hi", from acme's number, before the change

    def test_a_tenant_without_a_whatsapp_number_never_sends(self, database_url, engine, graph):
        settings = wa_settings(database_url, graph, whatsapp_tenants={PHONE_ID: "acme"})
        make_message(
            engine,
            USER,
            "initech",
            content="hi",
            metadata={"channel": "whatsapp", "phone_number_id": PHONE_ID, "to": USER, "wa_message_id": "wamid.R3"},
        )
        with app_client(settings) as client:
            outbox = client.services.whatsapp.outbox(engine)
            result = aio.run(send_to_device, outbox, "initech", USER, text="hello", timeout=5)
        assert result.status == "failed"
        assert graph.requests == []

    def test_a_bsuid_device_is_answered_at_its_own_phone_or_bsuid(self, client, graph, engine):
        contacts = [{"profile": {"name": "Bo"}, "wa_id": USER, "user_id": BSUID}]
        post(client, delivery([change([text("hi", "wamid.R4", user_id=BSUID)], contacts=contacts)]))
        assert [(s.get("to"), s.get("recipient")) for s in graph.sent] == [(USER, None)]

"""Status callbacks of the Graph API recorded on the replies, shown by the admin API and the export."""

from __future__ import annotations

from tests.channels.conftest import wa_settings
from tests.channels.payloads import (
    PHONE_ID,
    PHONE_ID_2,
    USER,
    change,
    delivery,
    post,
    rows,
    text,
)
from tests.sessions.conftest import ADMIN_KEYS, A
from tests.utils.agents import Scripted
from tests.utils.apps import app_client, use_registry
from tests.utils.factories import scalar

TENANTS = {PHONE_ID: "acme", PHONE_ID_2: "globex"}


def statuses(*callbacks, phone_number_id: str = PHONE_ID) -> dict:
    return delivery([change(statuses=list(callbacks), phone_number_id=phone_number_id)])


def api_delivery(client, device: str = USER) -> list[tuple]:
    page = client.get(f"/api/sessions/{device}/messages", headers=A).json()
    return [(m["role"], m["delivery"], m["error_message"]) for m in reversed(page["items"])]


def app(database_url, graph, **overrides):
    settings = wa_settings(database_url, graph, admin_api_keys=ADMIN_KEYS, whatsapp_tenants=TENANTS, **overrides)
    client = app_client(settings)
    return client


def test_states_move_forward_only_and_show_in_the_api_and_the_export(database_url, engine, graph):
    with app(database_url, graph) as client:
        use_registry(client, {"manager": Scripted("manager")})
        assert post(client, delivery([change([text("hi", "wamid.S1")])])).status_code == 200
        assert api_delivery(client) == [("user", None, None), ("assistant", "sent", None)]

        assert post(client, statuses(graph.status("delivered"))).status_code == 200
        assert api_delivery(client)[-1] == ("assistant", "delivered", None)
        # One delivery with a late "sent" before "read": read wins, whatever the order.
        post(client, statuses(graph.status("read"), graph.status("sent")))
        assert api_delivery(client)[-1] == ("assistant", "read", None)
        post(client, statuses(graph.status("sent")))
        post(client, statuses(graph.status("delivered")))
        assert api_delivery(client)[-1] == ("assistant", "read", None)

        exported = client.get(f"/api/sessions/{USER}/export", headers=A).json()
        assert [(m["role"], m.get("delivery")) for m in exported["messages"]] == [("user", None), ("assistant", "read")]
        # An exported document still imports (delivery is informational).
        client.delete(f"/api/sessions/{USER}", headers=A)
        assert client.post("/api/sessions/import", json=exported, headers=A).status_code == 201


def test_a_failure_keeps_its_reason_and_other_tenants_callbacks_change_nothing(database_url, engine, graph):
    with app(database_url, graph) as client:
        use_registry(client, {"manager": Scripted("manager")})
        post(client, delivery([change([text("hi", "wamid.F1")])]))
        # The same Graph id reported for another tenant's business number: not this reply.
        post(
            client,
            statuses(graph.status("failed", error=(131026, "Message undeliverable")), phone_number_id=PHONE_ID_2),
        )
        assert api_delivery(client)[-1] == ("assistant", "sent", None)
        post(client, statuses(graph.status("failed", error=(131026, "Message undeliverable"))))
        role, state, reason = api_delivery(client)[-1]
        assert (role, state) == ("assistant", "failed") and "131026" in reason and "undeliverable" in reason
        post(client, statuses(graph.status("delivered")))  # a failure is final
        assert api_delivery(client)[-1][1] == "failed"
        # A callback for an id nobody has, a malformed one and an unknown state: acknowledged, ignored.
        before = rows(engine)
        response = post(
            client,
            statuses(
                {"id": "wamid.NOPE", "status": "read"},
                {"status": "read"},
                {"id": graph.status("read")["id"], "status": "deleted"},
            ),
        )
        assert response.status_code == 200 and rows(engine) == before


def test_retry_reads_as_retry(database_url, engine, graph):
    with app(database_url, graph) as client:
        use_registry(client, {"manager": Scripted("manager")})
        graph.fail(500)
        post(client, delivery([change([text("hi", "wamid.R1")])]))
        assert api_delivery(client)[-1][:2] == ("assistant", "retry")


def test_profile_names_are_stored_only_with_the_tenants_consent(database_url, engine, graph):
    name = "SELECT display_name FROM conversation_states WHERE device_id = %(d)s"
    with app(database_url, graph) as client:
        use_registry(client, {"manager": Scripted("manager")})
        post(client, delivery([change([text("hi", "wamid.N1")])]))
        assert scalar(engine, name, d=USER) is None
    with app(database_url, graph, whatsapp_profile_name_tenants="acme") as client:
        use_registry(client, {"manager": Scripted("manager")})
        post(client, delivery([change([text("hi again", "wamid.N2")])]))
        assert scalar(engine, name, d=USER) == "Test User"

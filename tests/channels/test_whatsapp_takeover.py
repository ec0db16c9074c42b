"""Operator takeover on WhatsApp: held messages, operator replies through the Graph API, the 24-hour window."""

from __future__ import annotations

import pytest

from tests.channels.conftest import wa_settings
from tests.channels.payloads import USER, change, delivery, post, rows, text
from tests.utils.agents import Scripted
from tests.utils.apps import app_client, use_registry
from tests.utils.factories import snapshot

KEY = "whatsapp-operator-key-7c1d2e"
ADMIN = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def manager():
    return Scripted("manager")


@pytest.fixture
def client(database_url, engine, graph, manager):
    with app_client(wa_settings(database_url, graph, admin_api_keys=f"default:{KEY}")) as client:
        use_registry(client, {"manager": manager})
        yield client


def messages_sent(graph) -> list[dict]:
    """Message sends only: read receipts and typing indicators left out."""
    return [body for body in graph.sent if "status" not in body]


def write(client, body: str, mid: str):
    response = post(client, delivery([change([text(body, mid)])]))
    assert response.status_code == 200, response.text
    return response.json()


def take_over(client) -> None:
    response = client.post(f"/api/sessions/{USER}/takeover", json={"operator": "Ana"}, headers=ADMIN)
    assert response.status_code == 200, response.text


def reply(client, **body):
    return client.post(f"/api/sessions/{USER}/messages", json=body, headers=ADMIN)


def test_messages_are_held_no_agent_runs_and_no_reply_is_sent(client, engine, graph, manager):
    write(client, "hi", "wamid.A1")
    assert [m["text"]["body"] for m in messages_sent(graph)] == ["manager: hi"]
    take_over(client)
    assert write(client, "I need a person", "wamid.A2")["stored"] == 1
    assert write(client, "I need a person", "wamid.A2")["duplicates"] == 1
    assert [m.text for m in manager.seen] == ["hi"]
    assert len(messages_sent(graph)) == 1
    held = [r for r in rows(engine) if r["content"] == "I need a person"]
    assert [(r["role"], r["status"]) for r in held] == [("user", "held")]


def test_an_operator_reply_reaches_the_graph_api(client, engine, graph):
    write(client, "hi", "wamid.B1")
    take_over(client)
    write(client, "are you a person?", "wamid.B2")
    response = reply(client, text="Yes, Ana here.")
    assert response.status_code == 201, response.text
    stored = response.json()
    assert (stored["agent"], stored["operator"], stored["channel"], stored["delivery"]) == (
        "human",
        "Ana",
        "whatsapp",
        "sent",
    )
    sent = messages_sent(graph)[-1]
    assert (sent["to"], sent["type"], sent["text"]["body"]) == (USER, "text", "Yes, Ana here.")
    row = next(r for r in rows(engine) if r["id"] == stored["id"])
    assert row["metadata"]["delivered"] is True and not row["has_error"]


def test_free_form_text_outside_the_24_hour_window_is_409_and_a_template_goes(client, engine, graph):
    write(client, "hi", "wamid.C1")
    take_over(client)
    with engine.begin() as conn:  # the user's last message was 25 hours ago
        conn.exec_driver_sql(
            "UPDATE conversation_messages SET created_at = now() - interval '25 hours', "
            "sent_at = now() - interval '25 hours' WHERE role = 'user'"
        )
    before, sends = snapshot(engine), len(messages_sent(graph))
    response = reply(client, text="Still there?")
    assert response.status_code == 409 and response.json()["error"]["code"] == "outside_window"
    assert snapshot(engine) == before and len(messages_sent(graph)) == sends
    template = {"name": "follow_up", "language": {"code": "en_US"}}
    response = reply(client, template=template)
    assert response.status_code == 201, response.text
    sent = messages_sent(graph)[-1]
    assert (sent["type"], sent["template"]["name"], sent["template"]["language"]["code"]) == (
        "template",
        "follow_up",
        "en_US",
    )
    # Inside the window free-form text goes again.
    write(client, "yes", "wamid.C2")
    assert reply(client, text="Great.").status_code == 201
    assert messages_sent(graph)[-1]["text"]["body"] == "Great."

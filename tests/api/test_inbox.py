"""The operator inbox API: conversations newest first with channel, name, preview, the needs-a-person mark."""

from __future__ import annotations

import uuid

from tests.channels.conftest import wa_settings
from tests.channels.payloads import PHONE_ID, USER, change, delivery, post, text
from tests.sessions.conftest import ADMIN_KEYS, A, B
from tests.utils.agents import Scripted
from tests.utils.apps import app_client, use_registry
from tests.utils.factories import snapshot

TENANT = "acme"


class Named(Scripted):
    display_name = "Appointments"


def settings(database_url, graph, **overrides):
    return wa_settings(
        database_url,
        graph,
        admin_api_keys=ADMIN_KEYS,
        whatsapp_tenants={PHONE_ID: TENANT},
        web_tenants="default,acme",
        **overrides,
    )


def chat(client, dev: str, message: str):
    return client.post("/api/chat", json={"message": message}, headers={"X-Device-ID": dev, "X-Tenant-ID": TENANT})


def inbox(client, headers=A, **query) -> list[dict]:
    response = client.get("/api/inbox", params=query, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def test_two_channels_newest_first_with_names_previews_and_the_mark(database_url, engine, graph):
    with app_client(settings(database_url, graph)) as client:
        use_registry(client, {"manager": Scripted("manager"), "scheduling": Named("scheduling")})
        web = str(uuid.uuid4())
        chat(client, web, "hello from the web")
        post(client, delivery([change([text("hello from whatsapp", "wamid.I1")])]))
        items = inbox(client)
        assert [(i["device_id"], i["channel"]) for i in items] == [(USER, "whatsapp"), (web, "web")]
        assert items[0]["last_message"]["preview"] == "manager: hello from whatsapp"
        assert items[0]["last_message"]["delivery"] == "sent"
        assert items[1]["last_message"] == {**items[1]["last_message"], "role": "assistant", "delivery": None}
        # Without consent no profile name: a short label, the same on every read.
        assert items[0]["name"].startswith("WhatsApp ") and not items[0]["named"]
        assert items[1]["name"].startswith("Visitor ") and items[1]["name"] == inbox(client)[1]["name"]
        assert [i["waiting"] for i in items] == [0, 0]

        # A person takes the web conversation over; the visitor writes: it needs a person.
        assert client.post(f"/api/sessions/{web}/takeover", json={"operator": "Ana"}, headers=A).status_code == 200
        chat(client, web, "is anyone there?")
        items = inbox(client)
        assert items[0]["device_id"] == web
        assert (items[0]["waiting"], items[0]["agent"], items[0]["operator"]) == (1, "human", "Ana")
        assert items[0]["last_message"]["preview"] == "is anyone there?"
        assert [i["device_id"] for i in inbox(client, needs_person="true")] == [web]
        # The operator answers: no longer waiting.
        client.post(f"/api/sessions/{web}/messages", json={"text": "Ana here"}, headers=A)
        assert inbox(client, needs_person="true") == []

        assert [i["device_id"] for i in inbox(client, channel="whatsapp")] == [USER]
        assert [i["device_id"] for i in inbox(client, agent="human")] == [web]
        assert inbox(client, headers=B) == []  # another tenant sees none of it


def test_bad_filters_are_422_and_change_nothing(database_url, engine, graph):
    with app_client(settings(database_url, graph)) as client:
        before = snapshot(engine)
        for query in ({"channel": "sms"}, {"agent": "Bad Key"}, {"limit": 0}, {"needs_person": "maybe"}):
            response = client.get("/api/inbox", params=query, headers=A)
            assert response.status_code == 422, query
            assert response.json()["error"]["code"] == "validation_error"
        assert client.get("/api/inbox").status_code == 401
        assert snapshot(engine) == before


def test_agents_have_display_names_and_keys(database_url, engine, graph):
    with app_client(settings(database_url, graph)) as client:
        use_registry(
            client,
            {"manager": Scripted("manager"), "scheduling": Named("scheduling"), "front_desk": Scripted("front_desk")},
        )
        items = client.get("/api/agents", headers=A).json()["items"]
        assert items == [
            {"key": "manager", "display_name": "Manager"},
            {"key": "scheduling", "display_name": "Appointments"},
            {"key": "front_desk", "display_name": "Front Desk"},
            {"key": "human", "display_name": "A person"},
        ]
        assert client.get("/api/agents").status_code == 401


def test_profile_names_show_with_consent(database_url, engine, graph):
    with app_client(settings(database_url, graph, whatsapp_profile_name_tenants=TENANT)) as client:
        use_registry(client, {"manager": Scripted("manager")})
        post(client, delivery([change([text("hi", "wamid.P1")])]))
        (item,) = inbox(client)
        assert (item["name"], item["named"]) == ("Test User", True)

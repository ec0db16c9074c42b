"""GET /api/chat/agents: what the chat page shows for each agent key, for a device of an allowed tenant."""

from __future__ import annotations

from app.agents import AgentReply
from tests.api.test_chat import DEVICE
from tests.utils.apps import app_client, use_registry


class Named:
    display_name = "Front desk"

    async def handle(self, message):
        return AgentReply("hi")


class Plain:
    async def handle(self, message):
        return AgentReply("hi")


def test_each_key_with_its_display_name(settings, engine):
    with app_client(settings) as client:
        use_registry(client, {"manager": Named(), "late_billing": Plain()})
        response = client.get("/api/chat/agents", headers={"X-Device-ID": DEVICE})
    assert response.status_code == 200
    assert response.json()["items"] == [
        {"key": "manager", "display_name": "Front desk"},
        {"key": "late_billing", "display_name": "Late Billing"},
        {"key": "human", "display_name": "A person"},
    ]


def test_a_client_outside_the_web_tenants_is_refused(settings, engine):
    with app_client(settings) as client:
        missing = client.get("/api/chat/agents")
        other = client.get("/api/chat/agents", headers={"X-Device-ID": DEVICE, "X-Tenant-ID": "someone-else"})
    assert missing.status_code == 400
    assert (other.status_code, other.json()["error"]["code"]) == (400, "unknown_tenant")

"""Webhook deliveries shaped like Meta's, signed like Meta signs them, and probes of what was stored."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from app.core.engine import Engine

SECRET = "app-secret-for-tests"
VERIFY_TOKEN = "verify-token-for-tests"
ACCESS_TOKEN = "access-token-for-tests"
PHONE_ID = "1100001"
PHONE_ID_2 = "2200002"
USER = "15551230001"
USER_2 = "15551230002"
USER_3 = "15551230003"
BSUID = "US.13491208655302741918"
PATH = "/api/webhooks/whatsapp"


def now() -> str:
    return str(int(time.time()))


def text(body: str, mid: str, sender: str | None = USER, *, ts: str | None = None, user_id: str | None = None):
    """A text message; sender None leaves `from` out, as for a username-only user."""
    message: dict[str, Any] = {"id": mid, "timestamp": ts or now(), "type": "text", "text": {"body": body}}
    if sender is not None:
        message["from"] = sender
    if user_id is not None:
        message["from_user_id"] = user_id
    return message


def media(kind: str, mid: str, sender: str = USER) -> dict[str, Any]:
    content = {"id": f"media-{mid}", "mime_type": "image/jpeg", "sha256": "0" * 64}
    if kind == "reaction":
        content = {"message_id": "wamid.earlier", "emoji": "👍"}
    return {"from": sender, "id": mid, "timestamp": now(), "type": kind, kind: content}


def tap(kind: str, choice_id: str, title: str, mid: str, sender: str = USER, description: str | None = None):
    """A tapped reply button (kind "button_reply") or list row ("list_reply")."""
    reply = {"id": choice_id, "title": title} | ({"description": description} if description else {})
    return {
        "from": sender,
        "id": mid,
        "timestamp": now(),
        "type": "interactive",
        "interactive": {"type": kind, kind: reply},
    }


def quick_reply(payload: str, label: str, mid: str, sender: str = USER) -> dict[str, Any]:
    """A tapped quick-reply button of a template message."""
    return {
        "from": sender,
        "id": mid,
        "timestamp": now(),
        "type": "button",
        "button": {"payload": payload, "text": label},
    }


def located(mid: str, sender: str = USER, **place: Any) -> dict[str, Any]:
    return {
        "from": sender,
        "id": mid,
        "timestamp": now(),
        "type": "location",
        "location": {"latitude": 52.52, "longitude": 13.405, **place},
    }


def change(messages=(), *, phone_number_id: str = PHONE_ID, contacts=None, statuses=None) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
    }
    if messages:
        if contacts is None:
            senders = dict.fromkeys(m["from"] for m in messages if m.get("from"))
            contacts = [{"profile": {"name": "Test User"}, "wa_id": s} for s in senders]
        value["contacts"] = contacts
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = statuses
    return {"field": "messages", "value": value}


def delivery(*entries: list[dict[str, Any]]) -> dict[str, Any]:
    """One webhook delivery; each argument is the list of changes of one entry."""
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": f"waba-{n}", "changes": changes} for n, changes in enumerate(entries, 1)],
    }


def raw(payload: Any) -> bytes:
    # Meta sends compact JSON with every non-ASCII character escaped as \uXXXX.
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode()


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(client, payload: Any = None, *, body: bytes | None = None, signature: str | None = "sign", **headers):
    """POST a delivery signed over the exact bytes sent; signature None sends no header."""
    body = raw(payload) if body is None else body
    signature = sign(body) if signature == "sign" else signature
    sent = {"Content-Type": "application/json", "X-Hub-Signature-256": signature, **headers}
    return client.post(PATH, content=body, headers={k: v for k, v in sent.items() if v is not None})


def rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.begin() as conn:
        return [
            dict(r)
            for r in conn.exec_driver_sql(
                "SELECT id, tenant_id, device_id, role, content, status, agent, reply_to, has_error, "
                "error_message, metadata, sent_at, delivery FROM conversation_messages ORDER BY id"
            ).mappings()
        ]


def state_count(engine: Engine) -> int:
    with engine.begin() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM conversation_states").scalar()


def whatsapp_settings(database_url: str, graph_url: str, **overrides):
    """Test settings with the WhatsApp secrets set and every outbound call sent to graph_url."""
    from tests.conftest import make_settings

    values = {
        "whatsapp_verify_token": VERIFY_TOKEN,
        "whatsapp_app_secret": SECRET,
        "whatsapp_access_token": ACCESS_TOKEN,
        "whatsapp_api_base_url": graph_url,
        "whatsapp_timeout_seconds": 2,
    }
    return make_settings(database_url, **(values | overrides))

"""Traces of a WhatsApp turn through the webhook: the send's span in the turn's trace, no phone number anywhere."""

from __future__ import annotations

from opentelemetry.trace import SpanKind, StatusCode

from app.core.config import Settings
from app.core.logging import device_hash
from tests.channels.payloads import USER, change, delivery, post, text, whatsapp_settings
from tests.utils.agents import Scripted
from tests.utils.apps import app_client, use_registry
from tests.utils.telemetry import recording

TEXT = "call me back on this number"


REPLY = {
    "messaging_product": "whatsapp",
    "recipient_type": "individual",
    "to": USER,
    "type": "text",
    "text": {"body": f"manager: {TEXT}"},
}


def webhook_turn(database_url: str, graph) -> Settings:
    """One signed delivery of one text message from USER, answered by an echoing manager; the app's settings."""
    settings = whatsapp_settings(database_url, graph.url, log_hash_key="k")
    with app_client(settings) as client:
        use_registry(client, {"manager": Scripted("manager")})
        assert post(client, delivery([change([text(TEXT, "wamid.T1")])])).status_code == 200
    return settings


def test_a_whatsapp_reply_is_a_send_span_in_the_turns_trace(database_url, engine, graph):
    graph.fail(503, times=1)  # the first attempt is refused: the send is retried once
    with recording() as recorded:
        webhook_turn(database_url, graph)
    assert graph.delivered == [REPLY]
    turn, send = recorded.one("invoke_agent manager"), recorded.one("whatsapp.send")
    assert send.attributes["agent_sessions.whatsapp.status"] == "sent"
    assert send.attributes["agent_sessions.whatsapp.attempts"] == 2
    assert send.status.status_code != StatusCode.ERROR
    assert send.kind == SpanKind.CLIENT
    [request] = [span for span in recorded.spans() if span.kind == SpanKind.SERVER]
    assert request.name == "POST /api/webhooks/whatsapp"
    # The reply is sent after the turn, both under the webhook request that brought the message.
    for span in (turn, send):
        assert span.context.trace_id == request.context.trace_id, span.name
        assert span.parent is not None and span.parent.span_id == request.context.span_id, span.name
    assert turn.end_time <= send.start_time
    assert recorded.points("agent_sessions.whatsapp.sends") == [({"status": "sent"}, 1)]


def test_a_send_the_graph_api_refuses_is_an_error_span(database_url, engine, graph):
    graph.refuse_outside_window(times=1)
    with recording() as recorded:
        webhook_turn(database_url, graph)
    assert graph.delivered == []
    send = recorded.one("whatsapp.send")
    assert send.attributes["agent_sessions.whatsapp.status"] == "outside_window"
    assert send.attributes["agent_sessions.whatsapp.attempts"] == 1
    assert send.status.status_code == StatusCode.ERROR
    assert recorded.points("agent_sessions.whatsapp.sends") == [({"status": "outside_window"}, 1)]


def test_no_span_of_a_whatsapp_turn_carries_the_phone_number(database_url, engine, graph):
    with recording() as recorded:
        settings = webhook_turn(database_url, graph)
    assert graph.delivered == [REPLY]
    everything = recorded.text()
    for leak in (USER, f"+{USER}", USER[-7:], TEXT):
        assert leak not in everything, leak
    # The phone number is the device: spans name it by its keyed hash, as for a web device.
    hashed = device_hash(settings, USER)
    for name in ("agent_sessions.claim", "invoke_agent manager", "agent_sessions.finish"):
        assert recorded.one(name).attributes["agent_sessions.device.hash"] == hashed, name

"""WhatsApp deliveries through the real app, database and a local Graph API: order, exactly once, replies."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from app.agents.runner import TEXT_ONLY_REPLY
from app.channels.whatsapp import WhatsAppSender, message_payload, replier
from app.core.config import Settings
from app.pipeline import Inbound, Pipeline
from tests.channels.conftest import wa_settings
from tests.channels.payloads import (
    ACCESS_TOKEN,
    BSUID,
    PHONE_ID,
    PHONE_ID_2,
    USER,
    USER_2,
    USER_3,
    change,
    delivery,
    media,
    post,
    rows,
    state_count,
    text,
)
from tests.utils import aio
from tests.utils.agents import Gate, Scripted
from tests.utils.apps import app_client, use_registry
from tests.utils.proxy import outage_proxy
from tests.utils.states import row

DAY = 86400


VERSION = Settings.model_fields["whatsapp_api_version"].default


def path(phone_number_id: str = PHONE_ID) -> str:
    return f"/{VERSION}/{phone_number_id}/messages"


def replies(engine) -> list[dict]:
    return [r for r in rows(engine) if r["role"] == "assistant"]


class TestReplies:
    def test_outbound_request_is_exactly_the_cloud_api_call(self, client, graph, engine):
        assert post(client, delivery([change([text("hello", "wamid.O1")])])).status_code == 200
        [request] = graph.messages
        assert (request.method, request.path) == ("POST", path())
        assert request.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
        assert request.headers["content-type"] == "application/json"
        assert request.json == {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": USER,
            "type": "text",
            "text": {"body": "manager: hello"},
        }
        [reply] = replies(engine)
        assert (reply["has_error"], reply["error_message"], reply["metadata"]["delivered"]) == (False, None, True)
        user = rows(engine)[0]
        assert user["metadata"] == {
            "channel": "whatsapp",
            "phone_number_id": PHONE_ID,
            "to": USER,
            "wa_message_id": "wamid.O1",
        }
        assert (user["device_id"], user["tenant_id"], user["status"]) == (USER, "default", "done")

    def test_messages_across_entries_and_changes_run_in_order(self, client, graph, engine):
        payload = delivery(
            [
                change([text("a1", "wamid.1", USER), text("a2", "wamid.2", USER_2)]),
                change([text("a3", "wamid.3", USER)], phone_number_id=PHONE_ID_2),
            ],
            [change([text("a4", "wamid.4", USER_3), text("a5", "wamid.5", USER)])],
        )
        response = post(client, payload)
        assert response.json() == {"status": "ok", "stored": 5, "duplicates": 0, "ignored": 0}
        # Devices run side by side; each device's messages in the order Meta lists them.
        sent = [(r.path, r.json["to"], r.json["text"]["body"]) for r in graph.messages]
        assert [s for s in sent if s[1] == USER] == [
            (path(), USER, "manager: a1"),
            (path(PHONE_ID_2), USER, "manager: a3"),
            (path(), USER, "manager: a5"),
        ]
        assert sorted(s for s in sent if s[1] != USER) == [
            (path(), USER_2, "manager: a2"),
            (path(), USER_3, "manager: a4"),
        ]
        stored = rows(engine)
        assert [r["content"] for r in stored if r["role"] == "user" and r["device_id"] == USER] == ["a1", "a3", "a5"]
        for reply in replies(engine):
            asked = next(r for r in stored if r["id"] == reply["reply_to"])
            assert reply["content"] == f"manager: {asked['content']}"
            assert reply["metadata"]["delivered"] is True

    def test_the_demo_conversation_keeps_its_lock_across_deliveries(self, database_url, engine, graph):
        with app_client(wa_settings(database_url, graph)) as client:
            post(client, delivery([change([text("I'd like to book an appointment", "wamid.K1")])]))
            assert row(engine, USER)["active_agent"] == "scheduling"
            post(client, delivery([change([text("next thursday", "wamid.K2")])]))
        assert replies(engine)[-1]["agent"] == "scheduling"
        assert graph.sent[-1]["text"]["body"].startswith("What time on thursday?")

    def test_busy_device_reply_goes_where_its_own_message_came_from(self, client, graph, engine, echo):
        gate = Gate(echo, when=lambda message: message.text == "slow")
        use_registry(client, {"manager": gate})
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, client, delivery([change([text("slow", "wamid.S1")])]))
            assert gate.entered.wait(10)
            second = post(client, delivery([change([text("behind", "wamid.S2")], phone_number_id=PHONE_ID_2)]))
            assert second.status_code == 200
            assert second.json()["stored"] == 1
            assert graph.messages == []  # queued behind the busy device: acknowledged, not answered yet
            gate.release.set()
            assert first.result(30).status_code == 200
        # The holder of the lease answered both, each to the business number it was sent to.
        assert [(r.path, r.json["to"], r.json["text"]["body"]) for r in graph.messages] == [
            (path(), USER, "manager: slow"),
            (path(PHONE_ID_2), USER, "manager: behind"),
        ]
        assert all(r["metadata"]["delivered"] for r in replies(engine))


class TestExactlyOnce:
    def test_redelivery_sends_nothing_and_changes_nothing(self, client, graph, engine):
        payload = delivery([change([text("once", "wamid.R1"), text("twice?", "wamid.R2")])])
        assert post(client, payload).json()["stored"] == 2
        before_rows, before_version = rows(engine), row(engine, USER)["version"]
        again = post(client, payload)
        assert again.status_code == 200
        assert again.json() == {"status": "ok", "stored": 0, "duplicates": 2, "ignored": 0}
        assert len(graph.messages) == 2
        assert rows(engine) == before_rows
        assert row(engine, USER)["version"] == before_version

    def test_status_only_delivery_is_acknowledged_and_ignored(self, client, graph, engine):
        statuses = [
            {"id": "wamid.OUT1", "status": status, "timestamp": "1700000000", "recipient_id": USER}
            for status in ("sent", "delivered", "read")
        ]
        response = post(client, delivery([change(statuses=statuses)]))
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "stored": 0, "duplicates": 0, "ignored": 0}
        assert rows(engine) == [] and state_count(engine) == 0
        assert graph.messages == []

    def test_old_messages_are_acknowledged_and_ignored(self, client, graph, engine):
        old = str(int(time.time()) - 8 * DAY)
        recent = str(int(time.time()) - 6 * DAY)
        payload = delivery([change([text("replayed", "wamid.T1", ts=old), text("late", "wamid.T2", ts=recent)])])
        response = post(client, payload)
        assert response.json() == {"status": "ok", "stored": 1, "duplicates": 0, "ignored": 1}
        assert [r["content"] for r in rows(engine) if r["role"] == "user"] == ["late"]
        # Answered, but six days after the user wrote: outside the 24-hour window, so not sent.
        [reply] = replies(engine)
        assert (reply["content"], reply["delivery"]) == ("manager: late", "outside_window")
        assert graph.messages == []

    def test_max_age_comes_from_settings(self, database_url, engine, graph):
        minute_ago = str(int(time.time()) - 120)
        with app_client(wa_settings(database_url, graph, webhook_max_age_seconds=60)) as client:
            response = post(client, delivery([change([text("hi", "wamid.T3", ts=minute_ago)])]))
        assert response.json()["ignored"] == 1
        assert rows(engine) == [] and graph.messages == []


class TestNonText:
    def test_media_reaches_the_agent_as_an_attachment_and_a_text_only_agent_gets_the_polite_reply(
        self, client, graph, engine, echo
    ):
        payload = delivery([change([media("image", "wamid.M1")])])
        assert post(client, payload).json() == {"status": "ok", "stored": 1, "duplicates": 0, "ignored": 0}
        assert graph.sent == [
            {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": USER,
                "type": "text",
                "text": {"body": TEXT_ONLY_REPLY},
            }
        ]
        user, reply = rows(engine)
        assert (user["content"], user["status"], user["device_id"]) == ("[image]", "done", USER)
        assert user["metadata"]["attachments"] == [
            {"type": "image", "id": "media-wamid.M1", "mime_type": "image/jpeg", "sha256": "0" * 64, "caption": None}
        ]
        assert (reply["content"], reply["reply_to"]) == (TEXT_ONLY_REPLY, user["id"])
        assert reply["metadata"]["delivered"] is True
        assert echo.seen == []  # echo does not declare accepts_attachments
        assert post(client, payload).json()["duplicates"] == 1
        assert len(graph.messages) == 1 and len(rows(engine)) == 2

    def test_mixed_delivery_keeps_its_order(self, client, graph, engine):
        payload = delivery([change([text("hi", "wamid.X1"), media("audio", "wamid.X2"), text("there", "wamid.X3")])])
        post(client, payload)
        assert [s["text"]["body"] for s in graph.sent] == ["manager: hi", TEXT_ONLY_REPLY, "manager: there"]
        assert [r["content"] for r in rows(engine) if r["role"] == "user"] == ["hi", "[audio]", "there"]

    def test_reactions_are_not_answered(self, client, graph, engine):
        response = post(client, delivery([change([media("reaction", "wamid.X4")])]))
        assert response.json()["ignored"] == 1
        assert graph.requests == [] and rows(engine) == []


class TestBusinessScopedUsers:
    def test_username_only_sender_is_keyed_and_answered_by_bsuid(self, client, graph, engine):
        contacts = [{"profile": {"name": "Ana", "username": "@ana"}, "user_id": BSUID}]
        message = text("hola", "wamid.Z1", sender=None, user_id=BSUID)
        post(client, delivery([change([message], contacts=contacts)]))
        assert rows(engine)[0]["device_id"] == BSUID
        assert graph.sent == [
            {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "recipient": BSUID,
                "type": "text",
                "text": {"body": "manager: hola"},
            }
        ]

    def test_empty_from_with_user_id_only_in_contacts(self, client, graph, engine):
        contacts = [{"profile": {"name": "Ana"}, "wa_id": "", "user_id": BSUID}]
        post(client, delivery([change([text("hola", "wamid.Z2", sender="")], contacts=contacts)]))
        assert rows(engine)[0]["device_id"] == BSUID
        assert graph.sent[0]["recipient"] == BSUID and "to" not in graph.sent[0]

    def test_phone_and_bsuid_key_by_bsuid_and_reply_to_the_phone(self, client, graph, engine):
        contacts = [{"profile": {"name": "Bo"}, "wa_id": USER, "user_id": BSUID}]
        post(client, delivery([change([text("hi", "wamid.Z3", user_id=BSUID)], contacts=contacts)]))
        post(client, delivery([change([text("again", "wamid.Z4")], contacts=contacts)]))  # BSUID only in contacts
        assert {r["device_id"] for r in rows(engine)} == {BSUID}
        assert [(s.get("to"), s.get("recipient")) for s in graph.sent] == [(USER, None), (USER, None)]


class TestTenants:
    def test_phone_number_id_picks_the_tenant(self, database_url, engine, graph, echo):
        settings = wa_settings(database_url, graph, whatsapp_tenants={PHONE_ID_2: "acme"})
        with app_client(settings) as client:
            use_registry(client, {"manager": echo})
            post(client, delivery([change([text("to acme", "wamid.N1")], phone_number_id=PHONE_ID_2)]))
            post(client, delivery([change([text("to default", "wamid.N1")])]))  # same id, other tenant
        stored = [(r["tenant_id"], r["content"]) for r in rows(engine) if r["role"] == "user"]
        assert stored == [("acme", "to acme"), ("default", "to default")]
        assert row(engine, USER, tenant_id="acme") is not None
        assert [r.path for r in graph.messages] == [path(PHONE_ID_2), path()]


class TestDeliveryFailures:
    def test_graph_api_500_is_retried_then_recorded_and_the_webhook_still_succeeds(self, database_url, engine, graph):
        graph.fail(500)
        with app_client(wa_settings(database_url, graph, whatsapp_send_attempts=3)) as client:
            response = post(client, delivery([change([text("hello", "wamid.F1")])]))
        assert response.status_code == 200
        assert response.json()["stored"] == 1
        assert len(graph.messages) == 3
        [reply] = replies(engine)
        assert reply["has_error"] is True
        assert "HTTP 500" in reply["error_message"] and "3 attempts" in reply["error_message"]
        assert reply["metadata"]["delivered"] is False
        assert rows(engine)[0]["status"] == "done"  # answered; only the delivery failed

    def test_a_refused_request_is_not_retried(self, client, graph, engine):
        graph.fail(400)
        post(client, delivery([change([text("hello", "wamid.F2")])]))
        assert len(graph.messages) == 1
        assert "HTTP 400" in replies(engine)[0]["error_message"]

    def test_rate_limit_is_retried_until_accepted(self, client, graph, engine):
        graph.fail(429, times=1)
        post(client, delivery([change([text("hello", "wamid.F3")])]))
        assert len(graph.messages) == 2
        [reply] = replies(engine)
        assert (reply["has_error"], reply["metadata"]["delivered"]) == (False, True)

    def test_graph_api_that_hangs_past_the_timeout(self, database_url, engine, graph):
        graph.hang(30)
        settings = wa_settings(database_url, graph, whatsapp_timeout_seconds=0.5, whatsapp_send_attempts=2)
        with app_client(settings) as client:
            response = post(client, delivery([change([text("hello", "wamid.F4")])]))
        assert response.status_code == 200
        assert len(graph.messages) == 2
        [reply] = replies(engine)
        assert reply["has_error"] is True and "timeout" in reply["error_message"]

    def test_unreachable_graph_api_is_recorded(self, database_url, engine, graph):
        settings = wa_settings(
            database_url, graph, whatsapp_api_base_url="http://127.0.0.1:1", whatsapp_send_attempts=2
        )
        with app_client(settings) as client:
            assert post(client, delivery([change([text("hello", "wamid.F5")])])).status_code == 200
        assert "connection error" in replies(engine)[0]["error_message"]

    def test_missing_access_token_sends_nothing_and_is_recorded(self, database_url, engine, graph):
        with app_client(wa_settings(database_url, graph, whatsapp_access_token=None)) as client:
            assert post(client, delivery([change([text("hello", "wamid.F6")])])).status_code == 200
        assert graph.messages == []
        assert replies(engine)[0]["error_message"] == "WHATSAPP_ACCESS_TOKEN is not set"


class TestOutage:
    def test_store_outage_is_503_and_the_redelivery_is_processed_once(self, database_url, engine, graph, echo):
        payload = delivery([change([text("hello", "wamid.P1"), media("image", "wamid.P2")])])
        with outage_proxy(database_url) as proxy:
            settings = wa_settings(proxy.url, graph, db_connect_timeout=2)
            with app_client(settings) as client:
                use_registry(client, {"manager": echo})
                proxy.down()
                refused = post(client, payload)
                assert refused.status_code == 503
                assert refused.headers["retry-after"]
                assert refused.json()["error"]["code"] == "store_unavailable"
                assert graph.messages == [] and echo.seen == []
                proxy.up()
                assert post(client, payload).json()["stored"] == 2
                assert post(client, payload).json()["duplicates"] == 2
        assert [s["text"]["body"] for s in graph.sent] == ["manager: hello", TEXT_ONLY_REPLY]
        assert len(rows(engine)) == 4


class TestRecovery:
    def test_recovered_message_is_delivered_to_the_address_it_stored(self, database_url, engine, graph, echo):
        settings = wa_settings(database_url, graph)
        pipeline = Pipeline(engine, {"manager": echo}, settings)
        metadata = {"channel": "whatsapp", "phone_number_id": PHONE_ID_2, "wa_message_id": "wamid.L1", "to": USER_2}
        # A worker stores the message, takes the lease and dies before answering.
        aio.run(pipeline.ledger.claim, "default", USER_2, "left behind", external_id="wa:wamid.L1", metadata=metadata)
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE conversation_states SET lease_expires_at = now() - interval '1 second'")
        sender = WhatsAppSender(settings)
        try:
            assert aio.run(pipeline.recover, on_reply=replier(sender, pipeline.ledger)) == 1
        finally:
            sender.close()
        assert [(r.path, r.json["to"], r.json["text"]["body"]) for r in graph.messages] == [
            (path(PHONE_ID_2), USER_2, "manager: left behind")
        ]
        assert replies(engine)[0]["metadata"]["delivered"] is True

    def test_replies_of_other_channels_are_left_alone(self, database_url, engine, graph):
        settings = wa_settings(database_url, graph)
        pipeline = Pipeline(engine, {"manager": Scripted("manager")}, settings)
        sender = WhatsAppSender(settings)
        try:
            on_reply = replier(sender, pipeline.ledger)
            result = aio.run(
                pipeline.handle, Inbound("default", USER, "hi", None, {"channel": "web"}), on_reply=on_reply
            )
        finally:
            sender.close()
        assert result.reply == "manager: hi"
        assert graph.requests == []
        assert replies(engine)[0]["metadata"].get("delivered") is None

    def test_overlong_reply_is_cut_to_the_cloud_api_limit(self):
        body = message_payload({"to": USER}, "x" * 5000)["text"]["body"]
        assert len(body) == 4096 and body.endswith("…")

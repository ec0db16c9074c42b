"""The WhatsApp webhook's gate: verification handshake, request signatures, malformed and oversized bodies."""

from __future__ import annotations

import json
import logging

import pytest

from tests.channels.conftest import wa_settings
from tests.channels.payloads import (
    PATH,
    SECRET,
    USER,
    VERIFY_TOKEN,
    change,
    delivery,
    post,
    raw,
    rows,
    sign,
    state_count,
    text,
)
from tests.utils.apps import app_client

MIB = 1024 * 1024


def handshake(client, mode="subscribe", token=VERIFY_TOKEN, challenge="1158201444"):
    params = {"hub.mode": mode, "hub.verify_token": token, "hub.challenge": challenge}
    return client.get(PATH, params={k: v for k, v in params.items() if v is not None})


def assert_nothing_happened(engine, graph) -> None:
    assert rows(engine) == []
    assert state_count(engine) == 0
    assert graph.requests == []


class TestHandshake:
    def test_right_token_echoes_the_challenge_as_plain_text(self, client):
        response = handshake(client)
        assert response.status_code == 200
        assert response.text == "1158201444"
        assert response.headers["content-type"].startswith("text/plain")

    @pytest.mark.parametrize(
        ("mode", "token"),
        [
            ("subscribe", "wrong-token"),
            ("subscribe", VERIFY_TOKEN + "x"),
            ("subscribe", VERIFY_TOKEN[:-1]),
            ("subscribe", ""),
            ("subscribe", None),
            ("unsubscribe", VERIFY_TOKEN),
            (None, VERIFY_TOKEN),
        ],
    )
    def test_wrong_token_or_mode_is_403(self, client, mode, token, caplog):
        caplog.set_level(logging.WARNING, logger="app.security")
        response = handshake(client, mode=mode, token=token)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
        assert "1158201444" not in response.text
        assert any(r.name == "app.security" for r in caplog.records)

    @pytest.mark.parametrize("token", ["", "None", "anything"])
    def test_unset_verify_token_always_refuses(self, database_url, graph, token):
        with app_client(wa_settings(database_url, graph, whatsapp_verify_token=None)) as client:
            response = handshake(client, token=token)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"

    def test_blank_verify_token_always_refuses(self, database_url, graph):
        with app_client(wa_settings(database_url, graph, whatsapp_verify_token="  ")) as client:
            assert handshake(client, token="  ").status_code == 403

    def test_missing_challenge_is_400(self, client):
        response = handshake(client, challenge=None)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_challenge"


class TestSignature:
    def test_signed_delivery_is_stored_and_answered(self, client, engine, graph):
        response = post(client, delivery([change([text("hello", "wamid.A1")])]))
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ok", "stored": 1, "duplicates": 0, "ignored": 0}
        assert [r["content"] for r in rows(engine)] == ["hello", "manager: hello"]
        assert [s["text"]["body"] for s in graph.sent] == ["manager: hello"]

    def test_non_ascii_text_verifies_over_the_raw_escaped_bytes(self, client, engine, graph):
        words = "Olá, çà va? Café às 9h ☕ 😀"
        body = raw(delivery([change([text(words, "wamid.U1")])]))
        assert b"\\u00e1" in body and b"\\ud83d\\ude00" in body  # escaped the way Meta escapes
        assert "á".encode() not in body
        response = post(client, body=body)
        assert response.status_code == 200, response.text
        assert rows(engine)[0]["content"] == words
        assert graph.sent[0]["text"]["body"] == f"manager: {words}"

    def test_signature_over_a_reserialised_body_is_refused(self, client, engine, graph):
        payload = delivery([change([text("Olá 😀", "wamid.U2")])])
        reserialised = json.dumps(payload, ensure_ascii=False).encode()
        response = post(client, body=raw(payload), signature=sign(reserialised))
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_signature"
        assert_nothing_happened(engine, graph)

    def test_signature_of_another_body_is_refused(self, client, engine, graph):
        signed = raw(delivery([change([text("harmless", "wamid.B1")])]))
        sent = raw(delivery([change([text("forged", "wamid.B2")])]))
        response = post(client, body=sent, signature=sign(signed))
        assert response.status_code == 401
        assert_nothing_happened(engine, graph)

    @pytest.mark.parametrize(
        "signature",
        [
            None,
            "",
            "sha256=",
            "sha256=" + "0" * 64,
            "sha1=0123456789abcdef0123456789abcdef01234567",
            "WRONG-SECRET",  # replaced below by a signature made with another secret
            "BARE-HEX",  # replaced below by the right digest without its sha256= prefix
        ],
    )
    def test_missing_or_wrong_signature_is_401_and_logged_without_secrets(
        self, client, engine, graph, caplog, signature
    ):
        caplog.set_level(logging.DEBUG)
        body = raw(delivery([change([text("top secret words", "wamid.C1")])]))
        if signature == "WRONG-SECRET":
            signature = sign(body, secret="not-the-app-secret")
        elif signature == "BARE-HEX":
            signature = sign(body).removeprefix("sha256=")
        response = post(client, body=body, signature=signature)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_signature"
        assert_nothing_happened(engine, graph)
        refusals = [r for r in caplog.records if r.name == "app.security"]
        assert len(refusals) == 1
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "top secret words" not in logged
        assert SECRET not in logged

    def test_uppercase_hex_digest_is_accepted(self, client, engine):
        body = raw(delivery([change([text("hi", "wamid.D1")])]))
        signature = "sha256=" + sign(body).removeprefix("sha256=").upper()
        assert post(client, body=body, signature=signature).status_code == 200
        assert len(rows(engine)) == 2

    @pytest.mark.parametrize("secret", [None, "", "   "])
    def test_unset_app_secret_refuses_everything(self, database_url, engine, graph, caplog, secret):
        caplog.set_level(logging.WARNING, logger="app.security")
        body = raw(delivery([change([text("hi", "wamid.E1")])]))
        with app_client(wa_settings(database_url, graph, whatsapp_app_secret=secret)) as client:
            response = post(client, body=body, signature=sign(body, secret=secret or ""))
        assert response.status_code == 401
        assert_nothing_happened(engine, graph)
        assert any("WHATSAPP_APP_SECRET" in r.getMessage() for r in caplog.records if r.name == "app.security")


class TestMalformedBodies:
    @pytest.mark.parametrize(
        ("body", "code"),
        [
            (b'{"object": ', "invalid_json"),
            (b"\xff\xfe{}", "invalid_json"),
            (b"[]", "invalid_payload"),
            (b'"text"', "invalid_payload"),
        ],
    )
    def test_signed_but_malformed_is_400(self, client, engine, graph, body, code):
        response = post(client, body=body)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == code
        assert "Traceback" not in response.text
        assert_nothing_happened(engine, graph)

    @pytest.mark.parametrize(
        "payload",
        [
            {"object": "whatsapp_business_account"},
            {"entry": "not a list"},
            {"entry": [{"changes": [{"value": {"messages": [{"id": "x"}]}}]}]},  # no phone_number_id
            {"entry": [{"changes": [{"value": "nope"}]}]},
            delivery([change([{"id": "wamid.F1", "timestamp": "1", "type": "text"}])]),  # no sender
        ],
    )
    def test_odd_but_signed_shapes_are_acknowledged_and_change_nothing(self, client, engine, graph, payload):
        response = post(client, payload)
        assert response.status_code == 200
        assert response.json()["stored"] == 0
        assert_nothing_happened(engine, graph)

    def test_messages_from_a_sender_whose_id_is_unusable_are_ignored(self, client, engine, graph):
        response = post(client, delivery([change([text("hi", "wamid.G1", sender="has space")])]))
        assert response.status_code == 200
        assert response.json()["ignored"] == 1
        assert_nothing_happened(engine, graph)


class TestBodyLimit:
    def padded(self, size: int) -> bytes:
        body = raw(delivery([change([text("hi", "wamid.H1", USER)])]))
        return body[:-1] + b',"pad":"' + b"x" * size + b'"}'

    def test_ten_megabytes_is_413(self, client, engine, graph):
        body = self.padded(10 * MIB)
        response = post(client, body=body)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        assert_nothing_happened(engine, graph)

    def test_ten_megabytes_without_content_length_is_413(self, client, engine, graph):
        body = self.padded(10 * MIB)

        def chunks():
            for start in range(0, len(body), 64 * 1024):
                yield body[start : start + 64 * 1024]

        response = post(client, body=chunks(), signature=sign(body))
        assert response.status_code == 413
        assert_nothing_happened(engine, graph)

    def test_ten_megabytes_behind_a_lying_content_length_is_413(self, client, engine, graph):
        body = self.padded(10 * MIB)
        response = post(client, body=body, **{"Content-Length": "100"})
        assert response.status_code == 413
        assert_nothing_happened(engine, graph)

    def test_just_under_one_mebibyte_is_accepted(self, client, engine):
        body = self.padded(MIB - 1024)
        assert len(body) < MIB
        response = post(client, body=body)
        assert response.status_code == 200
        assert response.json()["stored"] == 1

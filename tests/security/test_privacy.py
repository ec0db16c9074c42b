"""What a caller can learn without the right secret: nothing about other tenants, nothing from near-miss secrets.

Device-id spoofing and log privacy are covered in tests/api/test_devices.py and
tests/api/test_logging.py; tenant isolation of each admin route in
tests/sessions/test_auth.py. Here: one sweep showing that a device of another
tenant and a device that exists nowhere get the same answer, byte for byte, and
that every secret is refused unless given whole (a prefix, an extension, another
length, another case), as a constant-time comparison of the whole value does.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest

from tests.channels.payloads import (
    PATH,
    SECRET,
    VERIFY_TOKEN,
    change,
    delivery,
    raw,
    text,
)
from tests.conftest import make_settings
from tests.security.conftest import CRON_SECRET, KEY_A, A, B, assert_clean_refusal
from tests.utils.apps import app_client
from tests.utils.factories import make_audit, make_exchange, make_state, snapshot

FOREIGN = "wa-15550002222"  # exists in tenant acme only
NOWHERE = "wa-15550003333"  # exists in no tenant
VOLATILE = {"x-request-id", "date"}


def seed_acme(engine) -> None:
    make_state(engine, FOREIGN, "acme", agent="scheduling", context={"user_preferences": {"lang": "en"}})
    make_exchange(engine, FOREIGN, "acme")
    make_audit(engine, FOREIGN, "acme")


def device_routes(device: str) -> list[tuple[str, str, object]]:
    return [
        ("GET", f"/api/sessions/{device}", None),
        ("GET", f"/api/sessions/{device}/history", None),
        ("GET", f"/api/sessions/{device}/messages?limit=5", None),
        ("GET", f"/api/sessions/{device}/audit", None),
        ("GET", f"/api/sessions/{device}/export", None),
        ("PATCH", f"/api/sessions/{device}/context", {"conversation_state": {"x": 1}}),
        ("PUT", f"/api/sessions/{device}/lock", {"agent": "scheduling", "ttl": 60}),
        ("DELETE", f"/api/sessions/{device}/lock", None),
        ("DELETE", f"/api/sessions/{device}", None),
    ]


def answer(response) -> tuple[int, bytes, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k.lower() not in VOLATILE}
    return response.status_code, response.content, headers


class TestNoTenantOracle:
    def test_another_tenants_device_answers_exactly_like_one_that_does_not_exist(self, client, engine):
        seed_acme(engine)
        before = snapshot(engine)
        for (method, foreign, body), (_, nowhere, _) in zip(
            device_routes(FOREIGN), device_routes(NOWHERE), strict=True
        ):
            seen = answer(client.request(method, foreign, json=body, headers=B))
            unseen = answer(client.request(method, nowhere, json=body, headers=B))
            assert seen[0] == 404, (method, foreign, seen)
            assert seen == unseen, (method, foreign)
        assert snapshot(engine) == before

    def test_lists_stats_and_import_do_not_change_with_another_tenants_data(self, client, engine):
        def view():
            stats = client.get("/api/stats", headers=B).json()
            stats.pop("last_cleanup")  # cleanup runs are global by design
            return (
                client.get("/api/sessions", headers=B).json(),
                client.get("/api/sessions?agent=scheduling&status=active", headers=B).json(),
                stats,
            )

        empty = view()
        seed_acme(engine)
        assert view() == empty
        # Importing a device id that another tenant uses succeeds exactly as for an unused one.
        document = client.get(f"/api/sessions/{FOREIGN}/export", headers=A).json()
        for device in (FOREIGN, NOWHERE):
            imported = client.post("/api/sessions/import", json=document | {"device_id": device}, headers=B)
            assert imported.status_code == 201, imported.text
            assert imported.json()["device_id"] == device

    def test_the_web_chat_does_not_reveal_other_tenants_either(self, client, engine):
        used, fresh = "5b0c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3", "6c1d2e3f-4051-4b6c-9d7e-8f90a1b2c3d4"
        booked = client.post(
            "/api/chat", json={"message": "book an appointment"}, headers={"X-Device-ID": used, "X-Tenant-ID": "acme"}
        )
        assert booked.json()["lock"]["agent"] == "scheduling"
        seen, unseen = (
            client.post("/api/chat", json={"message": "hi"}, headers={"X-Device-ID": device, "X-Tenant-ID": "globex"})
            for device in (used, fresh)
        )
        assert seen.status_code == unseen.status_code == 200
        assert seen.json() | {"device_id": None} == unseen.json() | {"device_id": None}
        assert seen.json()["lock"] == {"agent": None, "expires_at": None}


def near_misses(secret: str) -> list[str]:
    return [
        secret[:-1],
        secret[: len(secret) // 2],
        secret + "x",
        secret[:-1] + chr(ord(secret[-1]) ^ 1),
        secret.upper() if secret.upper() != secret else secret.lower(),
        "",
    ]


class TestSecretsAreComparedWhole:
    @pytest.mark.parametrize("attempt", near_misses(CRON_SECRET))
    def test_cron_secret(self, client, engine, attempt):
        response = client.get("/api/cron/cleanup", headers={"Authorization": f"Bearer {attempt}"})
        assert_clean_refusal(response, 401)
        assert snapshot(engine)["cleanup_runs"] == []

    @pytest.mark.parametrize("attempt", near_misses(KEY_A))
    def test_admin_key(self, client, attempt):
        assert_clean_refusal(client.get("/api/sessions", headers={"Authorization": f"Bearer {attempt}"}), 401)

    @pytest.mark.parametrize("attempt", near_misses(VERIFY_TOKEN))
    def test_whatsapp_verify_token(self, client, attempt):
        params = {"hub.mode": "subscribe", "hub.verify_token": attempt, "hub.challenge": "42"}
        assert_clean_refusal(client.get(PATH, params=params), 403)

    @pytest.mark.parametrize("forge", ["truncated", "half", "extended", "prefix_only", "sha1_scheme", "other_secret"])
    def test_whatsapp_signature(self, client, engine, graph, forge):
        body = raw(delivery([change([text("hello", "wamid.S1")])]))
        digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        header = {
            "truncated": f"sha256={digest[:-1]}",
            "half": f"sha256={digest[:32]}",
            "extended": f"sha256={digest}0",
            "prefix_only": "sha256=",
            "sha1_scheme": f"sha1={digest}",
            "other_secret": "sha256=" + hmac.new(SECRET[:-1].encode(), body, hashlib.sha256).hexdigest(),
        }[forge]
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": header}
        assert_clean_refusal(client.post(PATH, content=body, headers=headers), 401)
        assert snapshot(engine)["conversation_messages"] == [] and graph.requests == []

    def test_device_id_signature(self, database_url, engine):
        with app_client(make_settings(database_url, device_id_secret="device-secret-for-tests-0c1d")) as signed:
            issued = signed.post("/api/devices").json()["device_id"]
            uuid_part, _, tag = issued.partition(".")
            for forged_tag in (tag[:-1], tag[:8], f"{tag}A", ""):
                attempt = f"{uuid_part}.{forged_tag}"
                response = signed.post("/api/chat", json={"message": "hi"}, headers={"X-Device-ID": attempt})
                assert_clean_refusal(response, 401)
            assert signed.post("/api/chat", json={"message": "hi"}, headers={"X-Device-ID": issued}).status_code == 200

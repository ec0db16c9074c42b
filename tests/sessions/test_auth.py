"""Admin keys: who may call the session API, and that each key sees only its own tenant."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from app.core.config import parse_admin_keys, settings_problem
from app.errors import ConfigurationError
from tests.conftest import make_settings
from tests.sessions.conftest import KEY_A, KEY_B, A, B
from tests.utils.apps import app_client
from tests.utils.factories import make_audit, make_exchange, make_state, snapshot

DEVICE = "wa-15551234567"
LOCK = {"agent": "scheduling", "ttl": 60}

# Every route of the admin API, with a body where it needs one.
ROUTES = [
    ("GET", "/api/sessions", None),
    ("GET", "/api/stats", None),
    ("POST", "/api/sessions/import", {}),
    ("GET", f"/api/sessions/{DEVICE}", None),
    ("GET", f"/api/sessions/{DEVICE}/history", None),
    ("GET", f"/api/sessions/{DEVICE}/messages", None),
    ("GET", f"/api/sessions/{DEVICE}/audit", None),
    ("GET", f"/api/sessions/{DEVICE}/export", None),
    ("PATCH", f"/api/sessions/{DEVICE}/context", {"conversation_state": {"x": 1}}),
    ("PUT", f"/api/sessions/{DEVICE}/lock", LOCK),
    ("DELETE", f"/api/sessions/{DEVICE}/lock", None),
    ("DELETE", f"/api/sessions/{DEVICE}", None),
]
DEVICE_ROUTES = [route for route in ROUTES if DEVICE in route[1]]


def call(client, method, path, body, headers):
    return client.request(method, path, json=body, headers=headers)


def seed_acme(engine) -> None:
    make_state(engine, DEVICE, "acme", agent="scheduling", context={"user_preferences": {"lang": "en"}})
    make_exchange(engine, DEVICE, "acme")
    make_audit(engine, DEVICE, "acme")


class TestParseKeys:
    def test_pairs_with_whitespace_and_several_keys_per_tenant(self):
        raw = SecretStr(f" acme:{KEY_A} ,\n globex:{KEY_B}, acme:{KEY_B[::-1]},")
        assert parse_admin_keys(raw) == [
            ("acme", KEY_A.encode()),
            ("globex", KEY_B.encode()),
            ("acme", KEY_B[::-1].encode()),
        ]

    @pytest.mark.parametrize("raw", [None, "", " , "])
    def test_unset_or_empty_means_no_keys(self, raw):
        assert parse_admin_keys(raw) == []

    @pytest.mark.parametrize(
        ("raw", "fragment"),
        [
            (KEY_A, "entry 1 is not of the form tenant:key"),
            (f"acme:{KEY_A},globex", "entry 2 is not of the form tenant:key"),
            (f":{KEY_A}", "entry 1 is not of the form tenant:key"),
            ("acme:", "entry 1 is not of the form tenant:key"),
            (f"has space:{KEY_A}", "entry 1 names an invalid tenant id"),
            ("acme:short", "at least 16 printable characters"),
            (f"acme:{KEY_A},globex:{KEY_A}", "entry 2 reuses another tenant's key"),
        ],
    )
    def test_malformed_is_a_configuration_error_that_hides_the_key(self, raw, fragment):
        with pytest.raises(ConfigurationError, match=fragment) as caught:
            parse_admin_keys(SecretStr(raw))
        assert KEY_A not in str(caught.value)

    @pytest.mark.parametrize(
        ("header", "token"),
        [
            (f"Bearer {KEY_A}", KEY_A.encode()),
            (f"bearer {KEY_A}", KEY_A.encode()),
            (f"Bearer   {KEY_A}  ", KEY_A.encode()),  # servers strip the spaces around a header value
            (None, None),
            ("", None),
            ("Bearer", None),
            ("Bearer ", None),
            (KEY_A, None),
            (f"Basic {KEY_A}", None),
            (f"Bearer {KEY_A} extra", None),
        ],
    )
    def test_authorization_header_forms(self, client, engine, header, token):
        seed_acme(engine)
        headers = {} if header is None else {"Authorization": header}
        response = client.get("/api/sessions", headers=headers)
        assert response.status_code == (200 if token else 401), response.text


class TestAuthentication:
    @pytest.mark.parametrize(("method", "path", "body"), ROUTES)
    def test_every_route_refuses_a_request_without_key(self, client, engine, method, path, body):
        seed_acme(engine)
        before = snapshot(engine)
        response = call(client, method, path, body, {})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
        assert snapshot(engine) == before

    @pytest.mark.parametrize(
        "header",
        [
            f"Bearer {KEY_A}x",
            f"Bearer {KEY_A[:-1]}",
            f"Bearer x{KEY_A}",
            "Bearer acme",
            f"Basic {KEY_A}",
            KEY_A,
            f"Bearer {KEY_A} {KEY_A}",
            "Bearer",
            "Bearer ",
            f"Token {KEY_B}",
        ],
    )
    def test_wrong_or_malformed_header_is_401(self, client, header):
        response = client.get("/api/sessions", headers={"Authorization": header})
        assert response.status_code == 401
        assert response.json() == {
            "error": {"code": "unauthorized", "message": "missing or invalid admin bearer token"}
        }

    def test_valid_key_with_lowercase_scheme_is_accepted(self, client):
        assert client.get("/api/sessions", headers={"Authorization": f"bearer {KEY_A}"}).status_code == 200

    def test_no_keys_configured_refuses_every_key(self, database_url, engine):
        with app_client(make_settings(database_url)) as client:
            response = client.get("/api/sessions", headers=A)
        assert response.status_code == 401

    def test_malformed_setting_is_refused_when_settings_are_made(self, database_url):
        # Parsed once, at start: the app never gets to answer admin requests with it.
        with pytest.raises(ValidationError) as caught:
            make_settings(database_url, admin_api_keys=f"acme {KEY_A}")
        line = settings_problem(caught.value)
        assert line == "invalid settings: ADMIN_API_KEYS entry 1 is not of the form tenant:key"
        assert KEY_A not in line


class TestTenantIsolation:
    @pytest.mark.parametrize(("method", "path", "body"), DEVICE_ROUTES)
    def test_another_tenants_device_is_404_and_untouched(self, client, engine, method, path, body):
        seed_acme(engine)
        before = snapshot(engine)
        response = call(client, method, path, body, B)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        assert snapshot(engine) == before

    @pytest.mark.parametrize(("method", "path", "body"), DEVICE_ROUTES)
    def test_unknown_device_answers_exactly_like_a_foreign_one(self, client, engine, method, path, body):
        seed_acme(engine)
        foreign = call(client, method, path, body, B)
        unknown = call(client, method, path.replace(DEVICE, "no-such-device"), body, B)
        assert (foreign.status_code, foreign.json()) == (unknown.status_code, unknown.json())

    @pytest.mark.parametrize(("method", "path", "body"), DEVICE_ROUTES)
    def test_owner_reaches_every_route(self, client, engine, method, path, body):
        seed_acme(engine)
        assert call(client, method, path, body, A).status_code in (200, 204)

    def test_lists_and_stats_show_only_the_callers_tenant(self, client, engine):
        seed_acme(engine)
        make_state(engine, "globex-device", "globex")
        listed = client.get("/api/sessions", headers=B).json()
        assert [item["device_id"] for item in listed["items"]] == ["globex-device"]
        assert listed["total"] == 1
        assert client.get("/api/sessions?status=active", headers=B).json() == {"items": [], "total": 0}
        stats = client.get("/api/stats", headers=B).json()
        assert stats["active_locks_by_agent"] == {}
        assert stats["avg_lock_age_seconds_by_agent"] == {}
        assert stats["messages_last_hour"] == 0
        assert client.get("/api/stats", headers=A).json()["active_locks_by_agent"] == {"scheduling": 1}

    def test_same_device_id_in_two_tenants_stays_apart(self, client, engine):
        seed_acme(engine)
        make_state(engine, DEVICE, "globex", context={"user_preferences": {"lang": "de"}})
        assert client.get(f"/api/sessions/{DEVICE}", headers=B).json()["context"]["user_preferences"] == {"lang": "de"}
        assert client.delete(f"/api/sessions/{DEVICE}", headers=B).status_code == 204
        kept = client.get(f"/api/sessions/{DEVICE}", headers=A)
        assert kept.status_code == 200
        assert kept.json()["context"]["user_preferences"] == {"lang": "en"}
        assert len(client.get(f"/api/sessions/{DEVICE}/messages", headers=A).json()["items"]) == 2

    def test_import_lands_in_the_callers_tenant_whatever_the_document_says(self, client, engine):
        seed_acme(engine)
        document = client.get(f"/api/sessions/{DEVICE}/export", headers=A).json()
        assert document["tenant_id"] == "acme"
        before = client.get(f"/api/sessions/{DEVICE}", headers=A).json()
        response = client.post("/api/sessions/import", json=document, headers=B)
        assert response.status_code == 201, response.text
        imported = client.get(f"/api/sessions/{DEVICE}", headers=B).json()
        assert imported["context"] == before["context"]
        assert client.get(f"/api/sessions/{DEVICE}", headers=A).json() == before

"""GET /api/cron/cleanup: bearer auth in constant time, fail closed, and a real cleanup run."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.core.engine import Engine
from app.main import create_app
from app.sessions import SessionService
from tests.conftest import make_settings
from tests.deploy.conftest import CRON_SECRET
from tests.utils.states import expire, row

DEVICE = "cron-device-1"
URL = "/api/cron/cleanup"


def client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, serverless=True))


@pytest.fixture
def expired_lock(engine: Engine) -> Engine:
    """A device whose lock has run out but is still stored."""
    SessionService(engine).set_session_lock(DEVICE, "scheduling")
    expire(engine, DEVICE)
    assert row(engine, DEVICE)["active_agent"] == "scheduling"
    return engine


def assert_refused(response, engine: Engine) -> None:
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    # A refused call changes nothing: the expired lock is still stored.
    assert row(engine, DEVICE)["active_agent"] == "scheduling"


def test_right_secret_runs_cleanup(cron_settings: Settings, expired_lock: Engine):
    response = client(cron_settings).get(URL, headers={"Authorization": f"Bearer {CRON_SECRET}"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"released", "deleted", "duration_ms"}
    assert body["released"] == 1
    assert body["deleted"] == 0
    assert isinstance(body["duration_ms"], int) and body["duration_ms"] >= 0
    state = row(expired_lock, DEVICE)
    assert state["active_agent"] is None and state["expires_at"] is None


def test_live_lock_is_not_released(cron_settings: Settings, engine: Engine):
    SessionService(engine).set_session_lock(DEVICE, "scheduling")
    response = client(cron_settings).get(URL, headers={"Authorization": f"Bearer {CRON_SECRET}"})
    assert response.json()["released"] == 0
    assert row(engine, DEVICE)["active_agent"] == "scheduling"


def test_no_header(cron_settings: Settings, expired_lock: Engine):
    assert_refused(client(cron_settings).get(URL), expired_lock)


@pytest.mark.parametrize(
    "header",
    [
        "Bearer wrong-secret",
        f"Bearer {CRON_SECRET[:-1]}",  # a prefix of the right secret
        f"Bearer {CRON_SECRET}x",  # the right secret with a suffix
        CRON_SECRET,  # no scheme
        f"Basic {CRON_SECRET}",
        "Bearer ",
    ],
)
def test_wrong_secret(cron_settings: Settings, expired_lock: Engine, header: str):
    assert_refused(client(cron_settings).get(URL, headers={"Authorization": header}), expired_lock)


@pytest.mark.parametrize("secret", [None, "", "   "])
def test_unset_secret_fails_closed(database_url: str, expired_lock: Engine, secret: str | None):
    settings = make_settings(database_url, cron_secret=secret)
    # Whatever the caller sends, including the bearer an empty secret would produce.
    for header in (f"Bearer {secret or ''}", "Bearer ", "Bearer None", f"Bearer {CRON_SECRET}"):
        assert_refused(client(settings).get(URL, headers={"Authorization": header}), expired_lock)


@pytest.mark.parametrize("pasted", [f"{CRON_SECRET}\n", f"  {CRON_SECRET}\r\n", f"\t{CRON_SECRET} "])
def test_secret_pasted_with_surrounding_whitespace_is_trimmed(database_url: str, expired_lock: Engine, pasted: str):
    settings = make_settings(database_url, cron_secret=pasted)
    response = client(settings).get(URL, headers={"Authorization": f"Bearer {CRON_SECRET}"})
    assert response.status_code == 200 and response.json()["released"] == 1


def test_store_down_is_503(cron_settings: Settings):
    settings = cron_settings.model_copy(update={"database_url": "postgresql+psycopg://x@127.0.0.1:1/x"})
    response = client(settings).get(URL, headers={"Authorization": f"Bearer {CRON_SECRET}"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "store_unavailable"


def test_missing_database_url_is_configuration_error(cron_settings: Settings):
    settings = cron_settings.model_copy(update={"database_url": None})
    response = client(settings).get(URL, headers={"Authorization": f"Bearer {CRON_SECRET}"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "configuration_error"
    assert "DATABASE_URL" in response.json()["error"]["message"]

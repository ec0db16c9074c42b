"""Fixtures of the session admin API tests: an app with two tenants' admin keys."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings
from tests.utils.apps import app_client

KEY_A = "acme-admin-key-4f1c9e7b2a"
KEY_B = "globex-admin-key-8d3e6a0f51"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
ADMIN_KEYS = f"acme:{KEY_A},globex:{KEY_B}"
# The web chat may speak for the tenants these tests administer.
WEB_TENANTS = "default,acme,globex"


def admin_settings(database_url: str, **overrides):
    return make_settings(database_url, **({"admin_api_keys": ADMIN_KEYS, "web_tenants": WEB_TENANTS} | overrides))


@pytest.fixture
def client(database_url, engine):
    with app_client(admin_settings(database_url)) as client:
        yield client

"""Fixtures for the channel tests: a local Graph API and an app wired to it."""

from __future__ import annotations

import pytest

from tests.channels.payloads import ACCESS_TOKEN, SECRET, VERIFY_TOKEN
from tests.conftest import make_settings
from tests.utils.agents import Scripted
from tests.utils.apps import app_client
from tests.utils.graph_api import graph_api


def wa_settings(database_url: str, graph, **overrides):
    """Settings whose every outbound call goes to the local Graph API."""
    values = {
        "whatsapp_verify_token": VERIFY_TOKEN,
        "whatsapp_app_secret": SECRET,
        "whatsapp_access_token": ACCESS_TOKEN,
        "whatsapp_api_base_url": f"{graph.url}/v21.0",
        "whatsapp_timeout_seconds": 2,
    }
    return make_settings(database_url, **(values | overrides))


@pytest.fixture
def graph():
    with graph_api() as api:
        yield api


@pytest.fixture
def echo():
    return Scripted("manager")


@pytest.fixture
def client(database_url, engine, graph, echo):
    """The real app on the test database; the manager echoes, so replies show which message they answer."""
    with app_client(wa_settings(database_url, graph)) as client:
        client.app.state.registry = {"manager": echo}
        yield client

"""Fixtures for the channel tests: a local Graph API and an app wired to it."""

from __future__ import annotations

import pytest

from tests.channels.payloads import whatsapp_settings
from tests.utils.agents import Scripted
from tests.utils.apps import app_client, use_registry


def wa_settings(database_url: str, graph, **overrides):
    """Settings whose every outbound call goes to the local Graph API."""
    return whatsapp_settings(database_url, graph.url, **overrides)


@pytest.fixture
def echo():
    return Scripted("manager")


@pytest.fixture
def client(database_url, engine, graph, echo):
    """The real app on the test database; the manager echoes, so replies show which message they answer."""
    with app_client(wa_settings(database_url, graph)) as client:
        use_registry(client, {"manager": echo})
        yield client

"""Fixtures of the stream tests."""

from __future__ import annotations

import pytest

from tests.utils.gates import gate_server


@pytest.fixture
def gates(monkeypatch):
    """A gate server the streaming agents wait on (tests/utils/stream_agents.py), at GATE_URL in this process."""
    with gate_server() as gates:
        monkeypatch.setenv("GATE_URL", gates.url)
        yield gates

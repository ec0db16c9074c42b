"""AsyncSessionService: SessionService's methods as coroutines, with the same results and statements."""

from __future__ import annotations

from typing import Any

import pytest

from app import AsyncSessionService, InvalidDeviceId, InvalidInput, SessionService
from tests.utils import aio
from tests.utils.counting import count_statements, work
from tests.utils.states import expire

SYNC_DEVICE = "0b6f1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
ASYNC_DEVICE = "9a8b7c6d-5e4f-4d3c-8b2a-1f0e9d8c7b6a"

# (method, args after the device id, kwargs): a lock's whole life, then the context and a new session.
SCRIPT: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("get_session_lock", (), {}),
    ("set_session_lock", ("manager",), {"ttl": 60}),
    ("touch_session_lock", (), {}),
    ("handoff_session_lock", ("manager", "billing"), {}),
    ("handoff_session_lock", ("nobody", "billing"), {}),
    ("get_session_lock", (), {}),
    ("clear_session_lock", (), {}),
    ("clear_session_lock", (), {}),
    ("handoff_session_lock", (None, "billing"), {"ttl": 30}),
    ("update_session_context", ({"user_preferences": {"lang": "pt"}},), {}),
    ("get_session_context", (), {}),
    ("get_session_lock", (), {"tenant_id": "acme"}),
]


def test_every_method_answers_as_the_sync_one_in_one_statement(engine):
    sync, asynchronous = SessionService(engine), AsyncSessionService(engine)
    for name, args, kwargs in SCRIPT:
        expected = getattr(sync, name)(SYNC_DEVICE, *args, **kwargs)
        with count_statements(engine) as statements:
            got = aio.run(getattr(asynchronous, name), ASYNC_DEVICE, *args, **kwargs)
        assert got == expected, name
        assert len(work(statements)) == 1, (name, statements)


def test_a_new_session_is_started_and_its_id_returned(engine):
    sessions = AsyncSessionService(engine)
    first = aio.run(sessions.start_new_session, ASYNC_DEVICE)
    second = aio.run(sessions.start_new_session, ASYNC_DEVICE)
    assert first.startswith("sess_") and second.startswith("sess_") and first != second


def test_expired_locks_are_released_in_batches(engine):
    sync = SessionService(engine)
    for device in (SYNC_DEVICE, ASYNC_DEVICE):
        sync.set_session_lock(device, "billing")
        expire(engine, device)
    assert aio.run(AsyncSessionService(engine).cleanup_expired_sessions, batch_size=1) == 2
    assert sync.get_session_lock(SYNC_DEVICE) is None


def test_bad_input_is_refused_before_any_statement(engine):
    sessions = AsyncSessionService(engine)
    with count_statements(engine) as statements:
        with pytest.raises(InvalidDeviceId):
            aio.run(sessions.set_session_lock, "", "billing")
        with pytest.raises(InvalidInput):
            aio.run(sessions.cleanup_expired_sessions, batch_size=0)
    assert statements == []

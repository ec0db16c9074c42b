"""call_async: sync callers (the CLI, Lambda's schedule) reach the async path on one loop per thread."""

from __future__ import annotations

import asyncio
import threading

from app.core.aio import call_async
from app.core.db import arun
from app.core.engine import lock_pools, make_engine
from tests.conftest import make_settings


async def running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_calls_from_one_thread_share_its_loop():
    # An agent SDK's HTTP client binds to the loop that first used it: a new loop per call broke the
    # second cleanup run of a warm Lambda. Kept references: ids of collected loops could repeat.
    first, second = call_async(running_loop), call_async(running_loop)
    assert first is second and not first.is_closed()


def test_another_thread_gets_a_loop_of_its_own():
    here = call_async(running_loop)
    there: list[asyncio.AbstractEventLoop] = []
    worker = threading.Thread(target=lambda: there.append(call_async(running_loop)))
    worker.start()
    worker.join(30)
    assert there and there[0] is not here


def test_the_pools_a_call_made_are_closed_when_it_returns(database_url):
    engine = make_engine(make_settings(database_url))  # its own: the shared one has pools on other loops
    try:
        assert call_async(arun, engine, "SELECT 1 AS one", {}) == {"one": 1}
        # The connection went back to a pool that was then closed: no pool (nor its worker tasks)
        # is left waiting on a loop that runs only during calls.
        assert lock_pools(engine).idle() == 0
    finally:
        engine.dispose()

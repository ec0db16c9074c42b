"""A statement cancelled mid-flight (a turn's timeout, a stop, a shutdown) gives its pool slot back.

A guard: it passed before the give-back was shielded too (the cancellation did not land in it).
"""

from __future__ import annotations

import anyio

from app.core.db import arun
from app.core.engine import make_engine
from tests.conftest import make_settings
from tests.utils import aio


async def cancel_then_run(engine, times: int) -> dict:
    for _ in range(times):
        with anyio.move_on_after(0.05):  # cancelled while the server sleeps
            await arun(engine, "SELECT pg_sleep(5)", {})
    return await arun(engine, "SELECT 1 AS one", {})


def test_cancelled_statements_do_not_use_up_the_pool(database_url):
    # Two connections at most: a leaked slot per cancellation would exhaust it by the third.
    engine = make_engine(make_settings(database_url, db_pool="queue", db_pool_size=1, db_pool_timeout=1))
    try:
        assert aio.run(cancel_then_run, engine, 5) == {"one": 1}
    finally:
        engine.dispose()

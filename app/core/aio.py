"""Calling the async request path from sync code: the CLI, a scheduled Lambda event, a sync route.

The pipeline and the ledger are coroutines on the process's event loop. Sync code
that needs them goes through `call_async`, which never starts a thread of its own:
a sync route's worker thread hands the call to its loop, and code with no loop
(the CLI, Lambda's schedule) runs it on the thread's own loop, made on first use and
kept (as Mangum does for the HTTP handler): clients that bind to the loop that first
used them (an agent SDK's HTTP client) keep working from one call to the next.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.from_thread

from app.core.pools import close_loop_pools

T = TypeVar("T")

_local = threading.local()


def in_worker_thread() -> bool:
    """Whether this thread was started by anyio.to_thread for a running loop (a sync route's thread)."""
    try:
        anyio.from_thread.check_cancelled()
    except RuntimeError:
        return False
    return True


def thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop, made (and set as the thread's current loop) on first use, never closed here."""
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    return loop


def call_async(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Run coroutine function fn(*args, **kwargs) from sync code and return its result.

    On the thread's own loop, the database pools made for the call are closed before it
    returns (their worker tasks would otherwise wait on a loop that no longer runs).
    """
    call = functools.partial(fn, *args, **kwargs)
    if in_worker_thread():
        return anyio.from_thread.run(call)

    async def main() -> T:
        try:
            return await call()
        finally:
            await close_loop_pools()

    return thread_loop().run_until_complete(main())

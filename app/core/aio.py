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
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.from_thread

from app.core.pools import close_loop_pools

T = TypeVar("T")

_local = threading.local()

# Per loop: coroutine functions that close what was made for that loop (an HTTP client).
_AT_END: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Callable[[], Awaitable[None]]]] = (
    weakref.WeakKeyDictionary()
)


def at_loop_end(closer: Callable[[], Awaitable[None]]) -> None:
    """Have closer() awaited when the running loop ends through close_loop(): call it on the loop.

    For resources bound to one loop (an httpx.AsyncClient): the app's lifespan closes its
    own, a loop of call_async's own (or the tests' session loop) closes them here.
    """
    _AT_END.setdefault(asyncio.get_running_loop(), []).append(closer)


async def close_loop() -> None:
    """Close what at_loop_end registered for the running loop, then the loop's database pools."""
    for closer in _AT_END.pop(asyncio.get_running_loop(), []):
        await closer()
    await close_loop_pools()


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


def call_async(fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
    """Run coroutine function fn(*args, **kwargs) from sync code and return its result.

    On a loop of its own, what was made for that loop (pools, HTTP clients) is closed before returning.
    """
    call = functools.partial(fn, *args, **kwargs)
    if in_worker_thread():
        return anyio.from_thread.run(call)

    async def main() -> T:
        try:
            return await call()
        finally:
            await close_loop()

    return thread_loop().run_until_complete(main())

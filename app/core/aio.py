"""Calling the async request path from sync code: the CLI, a scheduled Lambda event, a sync route.

The pipeline and the ledger are coroutines on the process's event loop. Sync code
that needs them goes through `call_async`, which never starts a thread of its own:
a sync route's worker thread hands the call to its loop, and code with no loop
(the CLI, Lambda's schedule) runs it on a loop of its own for the call's length.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.from_thread

from app.core.pools import close_loop_pools

T = TypeVar("T")


def in_worker_thread() -> bool:
    """Whether this thread was started by anyio.to_thread for a running loop (a sync route's thread)."""
    try:
        anyio.from_thread.check_cancelled()
    except RuntimeError:
        return False
    return True


def call_async(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Run coroutine function fn(*args, **kwargs) from sync code and return its result.

    On a loop of its own, the async pools made for that loop are closed before returning.
    """
    call = functools.partial(fn, *args, **kwargs)
    if in_worker_thread():
        return anyio.from_thread.run(call)

    async def main() -> T:
        try:
            return await call()
        finally:
            await close_loop_pools()

    return anyio.run(main)

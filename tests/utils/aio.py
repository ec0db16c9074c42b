"""One event loop for the tests' direct calls into the async pipeline and ledger.

A test thread calls `run(coroutine_function, *args, **kwargs)`; the call runs on a
loop kept in a thread of its own for the whole test session (anyio's blocking
portal; tests/conftest.py stops it last), so pools made for it last across tests, and calls made from several test
threads at once run concurrently on it, as requests do on a server.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from app.core.aio import close_loop
from app.core.engine import Engine, lock_pools

T = TypeVar("T")

_lock = threading.Lock()
_portal: BlockingPortal | None = None
_stack = contextlib.ExitStack()


def portal() -> BlockingPortal:
    """The session's portal, started on first use and stopped at exit."""
    global _portal
    with _lock:
        if _portal is None:
            _portal = _stack.enter_context(start_blocking_portal())
        return _portal


def stop() -> None:
    """Close what was made for the loop (HTTP clients, pools), then the loop (the session's last fixture teardown)."""
    global _portal
    with _lock:
        if _portal is not None:
            _portal.call(close_loop)  # HTTP clients, then pools (their worker tasks end with their loop)
            _stack.close()
            _portal = None


def close_pools(engine: Engine) -> None:
    """Close engine's async pool on the session's loop (a fresh one is made on next use)."""
    if _portal is not None:
        _portal.call(lock_pools(engine).aclose)


def run(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Run coroutine function fn(*args, **kwargs) on the session's loop and return its result."""
    return portal().call(functools.partial(fn, *args, **kwargs))

"""How the app learns, in a server's process, that a graceful shutdown has begun.

On SIGTERM or SIGINT uvicorn stops accepting, then waits (up to its graceful-shutdown
timeout, SHUTDOWN_GRACE_SECONDS under `python -m app serve`) for the open connections to
close; the app's lifespan exits only after that. A flag set at the lifespan's exit comes too
late: an event stream open meanwhile held every shutdown for the whole grace period.
uvicorn tells the app nothing before (its `Server.should_exit` is its own), so the app
listens to the same signals: `on_stop_signals` puts a handler in front of the one the
server installed, which schedules the app's callback on the loop and then hands the signal
on, unchanged (a second Ctrl-C still forces uvicorn's exit).

This holds wherever the server handles the signals in Python on the main thread: plain
`uvicorn app.main:create_app --factory`, `python -m app serve` (which becomes uvicorn), each
of uvicorn's `--workers`, and gunicorn's uvicorn workers. Where the lifespan runs off the
main thread (a TestClient's app, uvicorn started in a thread) no handler can be set: there
the app learns of the shutdown only at the lifespan's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)  # the ones uvicorn handles as "shut down gracefully"


@contextlib.contextmanager
def on_stop_signals(callback: Callable[[], None]) -> Iterator[bool]:
    """While in the block, SIGINT and SIGTERM also run callback() on the running loop (its next
    pass, not inside the signal handler), then the handler set before runs as it would have.

    Yields whether any handler was chained: not off the main thread (see the module doc),
    nor for a signal whose handler is not a Python callable (SIG_DFL, SIG_IGN: nothing to
    hand on to). At the exit the earlier handlers are put back, unless another replaced ours.
    Call it from a coroutine (it reads the running loop).
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    loop = asyncio.get_running_loop()
    chained: dict[signal.Signals, tuple[Any, Any]] = {}
    for sig in SIGNALS:
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: FrameType | None, previous: Callable[..., Any] = previous) -> None:
            # Thread-safe scheduling is also the one safe from a signal handler, which may run in the
            # middle of the loop's own bookkeeping. A loop already closed has nobody left to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(callback)
            previous(signum, frame)

        signal.signal(sig, handler)
        chained[sig] = (previous, handler)
    try:
        yield bool(chained)
    finally:
        for sig, (previous, handler) in chained.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, previous)

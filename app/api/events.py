"""Server-sent `changed` events for the pages that show live state: the console's inbox and the chat page.

One stream per open page (text/event-stream). It sends `event: changed` with what `ask()`
returns whenever that differs from what it last sent (the first answer at once), so a page
learns of a change without polling:

- `wake(seconds)` sleeps until an in-process wake-up (app.runtime Wakeups: a turn finished,
  an operator acted) or until its poll is due; the poll is what sees other instances' changes;
- at most one `ask()` (one statement) a second, and one every POLL_SECONDS while nothing
  wakes it; a store that is down keeps the last answer (the next poll asks again);
- a comment line every HEARTBEAT_SECONDS keeps proxies from closing it;
- it ends after EVENTS_STREAM_SECONDS, or as soon as the server stops accepting (Runtime.stop:
  SIGTERM), with a comment saying so; the page opens a new one (`retry: 3000`), on another
  instance, and the stream never holds the shutdown's grace period.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

import anyio
from fastapi.responses import StreamingResponse

from app.errors import StoreUnavailable
from app.runtime import Runtime

POLL_SECONDS = 2.0  # without an in-process wake-up: how often a stream asks the database
MIN_INTERVAL_SECONDS = 1.0  # never more than one statement a second per stream
HEARTBEAT_SECONDS = 15.0
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # no proxy buffering the stream


def event(name: str, data: Any) -> bytes:
    """One server-sent event: name and its data as JSON."""
    return f"event: {name}\ndata: {json.dumps(data, default=str)}\n\n".encode()


def change_events(
    ask: Callable[[], Awaitable[Any]],
    wake: Callable[[float], Awaitable[bool]],
    runtime: Runtime,
    seconds: float,
    hold: Callable[[], AbstractContextManager[bool]] | None = None,
) -> StreamingResponse:
    """The streaming response: `changed` with ask()'s answer (JSON-able) each time it differs, for at most
    seconds (EVENTS_STREAM_SECONDS); see the module doc. hold: counts the stream while it runs (Runtime.event_stream);
    when it yields False the stream ends at once."""

    async def stream() -> AsyncIterator[bytes]:
        with hold() if hold is not None else contextlib.nullcontext(True) as allowed:
            if not allowed:
                yield b": too many event streams for this device: closed\n\n"
                return
            async for chunk in changes():
                yield chunk

    async def changes() -> AsyncIterator[bytes]:
        yield b"retry: 3000\n\n"
        seen: Any = None
        sent = False
        asked, beat = 0.0, time.monotonic()
        end = time.monotonic() + seconds
        while time.monotonic() < end and not runtime.stopping:
            pause = MIN_INTERVAL_SECONDS - (time.monotonic() - asked)
            if pause > 0:
                await anyio.sleep(pause)
            asked = time.monotonic()
            try:
                answer = await ask()
            except StoreUnavailable:
                answer = seen  # the page keeps what it has; the next poll asks again
            if answer != seen or (not sent and answer is not None):
                seen, sent, beat = answer, True, time.monotonic()
                yield event("changed", answer)
            elif time.monotonic() - beat >= HEARTBEAT_SECONDS:
                beat = time.monotonic()
                yield b": keep-alive\n\n"
            await wake(min(POLL_SECONDS, max(0.0, end - time.monotonic())))  # at once once stopping
        if runtime.stopping:
            yield b": the server is stopping: reconnect\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers=HEADERS)

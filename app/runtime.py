"""The process's turn runtime: how many turns it holds, the agent threads, the wake-ups of waiters.

One `Runtime` per process (built with the services), shared by every pipeline:

| piece          | what it bounds or does                                                             |
|----------------|------------------------------------------------------------------------------------|
| `slot()`       | MAX_CONCURRENT_TURNS requests inside the pipeline at once; past it `Overloaded`      |
| `agent_threads`| AGENT_THREADS sync agents running at once (an async agent takes no thread)           |
| `wakeups`      | a waiter sleeps until its device's turn finishes in this process, or its poll is due |
| `closing`      | set at shutdown: no new turn starts                                                  |
| `holding()`    | counts the leases held in this process; `settle()` waits until none is (shutdown)    |
| `streams`      | the drafts being written here and the task group of streamed turns (app/streams)     |

Everything here runs on the one event loop of the process, so plain counters need no lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anyio

from app.core.config import Settings
from app import telemetry
from app.errors import Overloaded
from app.streams.hub import Hub


class Wakeups:
    """Per-device events: a waiter awaits `wait(key, seconds)`, a finished turn calls `notify(key)`.

    An event exists only while someone waits on it: the last waiter to leave removes it,
    so devices that were waited on once cost nothing afterwards.
    """

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], tuple[anyio.Event, list[int]]] = {}

    async def wait(self, key: tuple[str, str], seconds: float) -> bool:
        """Sleep until key is notified or seconds pass; True when notified."""
        entry = self._events.get(key)
        if entry is None:
            entry = self._events[key] = (anyio.Event(), [0])
        event, waiters = entry
        waiters[0] += 1
        try:
            with anyio.move_on_after(seconds):
                await event.wait()
                return True
            return False
        finally:
            waiters[0] -= 1
            if not waiters[0] and self._events.get(key) is entry:
                del self._events[key]

    def notify(self, key: tuple[str, str]) -> None:
        """Wake every waiter of key (they poll the database at once)."""
        entry = self._events.pop(key, None)
        if entry is not None:
            entry[0].set()

    def __len__(self) -> int:
        """Devices with someone waiting on them now."""
        return len(self._events)


class Runtime:
    """The bound on turns, the limiter of sync agents' threads and the wake-ups; see the module doc."""

    def __init__(self, settings: Settings):
        self.max_turns = settings.max_concurrent_turns
        self.agent_threads = anyio.CapacityLimiter(settings.agent_threads)
        self.wakeups = Wakeups()
        self.streams = Hub()  # the drafts this process's turns write, and the streamed turns' task group
        self.active = 0
        self.closing = False
        self.holders = 0  # leases held by this process's pipelines (a turn, or its give-back)
        self._settled: anyio.Event | None = None

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of MAX_CONCURRENT_TURNS places; Overloaded (nothing done) when none is free or closing."""
        if self.closing:
            telemetry.refused("closing")
            raise Overloaded("the server is shutting down: retry on another instance", retry_after=1)
        if self.active >= self.max_turns:
            telemetry.refused("overloaded")
            raise Overloaded(f"this instance holds {self.max_turns} turns already: retry shortly", retry_after=1)
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Count a held lease until its last turn is finished or the lease given back."""
        self.holders += 1
        try:
            yield
        finally:
            self.holders -= 1
            if self.holders == 0 and self._settled is not None:
                self._settled.set()
                self._settled = None

    async def settle(self, seconds: float) -> bool:
        """Wait (at most seconds) until no lease is held here; False when some still is.

        At shutdown the server cancels the turns left after its grace period without
        waiting for them: each then gives its lease back, which needs the database pool
        that the shutdown closes next. This wait lets those statements run first.
        """
        with anyio.move_on_after(seconds):
            while self.holders:
                if self._settled is None:
                    self._settled = anyio.Event()
                await self._settled.wait()
        return self.holders == 0

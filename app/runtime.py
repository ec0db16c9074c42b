"""The process's turn runtime: how many turns it holds, the agent threads, the wake-ups of waiters.

One `Runtime` per process (built with the services), shared by every pipeline:

| piece          | what it bounds or does                                                             |
|----------------|------------------------------------------------------------------------------------|
| `slot()`       | MAX_CONCURRENT_TURNS requests inside the pipeline at once; past it `Overloaded`      |
| `agent_threads`| AGENT_THREADS sync agents running at once (an async agent takes no thread)           |
| `wakeups`      | a waiter sleeps until its device's turn finishes in this process, or its poll is due |
|                | (a finished turn also wakes its tenant's `watch`ers: the console's event streams)   |
| `closing`      | set at shutdown: no new turn starts                                                  |

Everything here runs on the one event loop of the process, so plain counters need no lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anyio

from app.core.config import Settings
from app.errors import Overloaded


class Wakeups:
    """Per-device events: a waiter awaits `wait(key, seconds)`, a finished turn calls `notify(key)`.

    An event exists only while someone waits on it: the last waiter to leave removes it,
    so devices that were waited on once cost nothing afterwards.
    """

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], tuple[anyio.Event, list[int]]] = {}
        self._tenants: dict[str, anyio.Event] = {}

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
        self.notify_tenant(key[0])

    async def watch(self, tenant: str, seconds: float) -> bool:
        """Sleep until something of tenant changes in this process (notify_tenant) or seconds pass; True when woken.

        One event per tenant with watchers, dropped when set: a tenant nobody watches costs nothing.
        """
        event = self._tenants.get(tenant)
        if event is None:
            event = self._tenants[tenant] = anyio.Event()
        with anyio.move_on_after(seconds):
            await event.wait()
            return True
        return False

    def notify_tenant(self, tenant: str) -> None:
        """Wake every watcher of tenant (a turn finished, an operator acted)."""
        event = self._tenants.pop(tenant, None)
        if event is not None:
            event.set()

    def __len__(self) -> int:
        """Devices with someone waiting on them now."""
        return len(self._events)


class Runtime:
    """The bound on turns, the limiter of sync agents' threads and the wake-ups; see the module doc."""

    def __init__(self, settings: Settings):
        self.max_turns = settings.max_concurrent_turns
        self.agent_threads = anyio.CapacityLimiter(settings.agent_threads)
        self.wakeups = Wakeups()
        self.active = 0
        self.closing = False

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of MAX_CONCURRENT_TURNS places; Overloaded (nothing done) when none is free or closing."""
        if self.closing:
            raise Overloaded("the server is shutting down: retry on another instance", retry_after=1)
        if self.active >= self.max_turns:
            raise Overloaded(f"this instance holds {self.max_turns} turns already: retry shortly", retry_after=1)
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

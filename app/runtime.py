"""The process's turn runtime: how many turns it holds, the agent threads, the wake-ups of waiters.

One `Runtime` per process (built with the services), shared by every pipeline:

| piece          | what it bounds or does                                                             |
|----------------|------------------------------------------------------------------------------------|
| `admission`    | ADMISSION_WIDTH requests starting a turn run their CPU-bound start at once (below)   |
| `slot()`       | MAX_CONCURRENT_TURNS requests inside the pipeline at once; past it `Overloaded`      |
| `agent_threads`| AGENT_THREADS sync agents running at once (an async agent takes no thread)           |
| `wakeups`      | a waiter sleeps until its device's turn finishes in this process, or its poll is due |
|                | (a finished turn also wakes its tenant's `watch`ers, the consoles' event streams,   |
|                | and its device's `watch_device`ers, the chat pages' event streams)                  |
| `stopping`     | set once the server stops accepting (`stop()`: SIGTERM, app/stopping.py): the event  |
|                | streams that only wait for news end, so they do not hold the shutdown's grace period |
| `closing`      | set at shutdown (the lifespan's exit): no new turn starts                            |
| `holding()`    | counts the leases held in this process; `settle()` waits until none is (shutdown)    |
| `streams`      | the drafts being written here and the task group of streamed turns (app/streams)     |
| `background`   | work that outlives its request (a webhook's turns after its answer), in a task group |
|                | the app's lifespan owns; at shutdown it gets SHUTDOWN_GRACE_SECONDS, then is cancelled |

Everything here runs on the one event loop of the process, so plain counters need no lock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

import anyio
import anyio.abc

from app import telemetry
from app.core.config import Settings
from app.core.db import admission_release
from app.errors import Overloaded, TooManyStreams
from app.streams.hub import Hub

logger = logging.getLogger(__name__)


class _Sleepers:
    """One event and how many sleep on it."""

    __slots__ = ("event", "count")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.count = 0


async def _sleep(table: dict[Any, _Sleepers], key: Any, seconds: float) -> bool:
    entry = table.get(key)
    if entry is None:
        entry = table[key] = _Sleepers()
    entry.count += 1
    try:
        with anyio.move_on_after(seconds):
            await entry.event.wait()
            return True
        return False
    finally:
        entry.count -= 1
        if not entry.count and table.get(key) is entry:
            del table[key]


def _wake(table: dict[Any, _Sleepers], key: Any) -> None:
    entry = table.pop(key, None)
    if entry is not None:
        entry.event.set()


class Wakeups:
    """In-process wake-ups: a turn's waiters by device, and the event streams by device and by tenant.

    A waiter awaits `wait(key, seconds)` and a finished turn calls `notify(key)`; a chat
    page's stream awaits `watch_device`, a console's `watch`, and `changed` wakes both. An
    event exists only while someone sleeps on it: the last sleeper to leave removes it, so a
    device or tenant nobody waits on costs nothing.
    """

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], _Sleepers] = {}  # a turn's waiters
        self._devices: dict[tuple[str, str], _Sleepers] = {}  # chat pages' event streams
        self._tenants: dict[str, _Sleepers] = {}  # consoles' event streams
        self.stopped = False  # the server is stopping: the event streams' sleeps end at once

    async def wait(self, key: tuple[str, str], seconds: float) -> bool:
        """Sleep until key is notified or seconds pass; True when notified."""
        return await _sleep(self._events, key, seconds)

    def notify(self, key: tuple[str, str]) -> None:
        """Wake every waiter of key (they poll the database at once), and what shows the device."""
        _wake(self._events, key)
        self.changed(key)

    def changed(self, key: tuple[str, str]) -> None:
        """Wake the event streams showing key (its chat pages, its tenant's consoles), not the turn's waiters:
        something people see changed (an operator took over, replied, released)."""
        _wake(self._devices, key)
        self.notify_tenant(key[0])

    async def watch(self, tenant: str, seconds: float) -> bool:
        """Sleep until something of tenant changes in this process (notify_tenant), seconds pass or the
        server stops (`stop`); True when woken."""
        return self.stopped or await _sleep(self._tenants, tenant, seconds)

    async def watch_device(self, key: tuple[str, str], seconds: float) -> bool:
        """Sleep until key (tenant, device) changes in this process, seconds pass or the server stops; True if woken."""
        return self.stopped or await _sleep(self._devices, key, seconds)

    def stop(self) -> None:
        """Wake every event stream, now and from now on (`watch`, `watch_device`); a turn's waiters sleep on."""
        self.stopped = True
        for table in (self._devices, self._tenants):
            for key in list(table):
                _wake(table, key)

    def notify_tenant(self, tenant: str) -> None:
        """Wake every watcher of tenant (a turn finished, an operator acted)."""
        _wake(self._tenants, tenant)

    def __len__(self) -> int:
        """Devices with someone waiting on them now."""
        return len(self._events)


class Background:
    """Tasks that outlive the request that started them, in the app's task group (see `serve`).

    Without a lifespan (Lambda through Mangum with lifespan="off") there is no group:
    `running` is False and callers keep their work inside the request.
    """

    def __init__(self) -> None:
        self._group: anyio.abc.TaskGroup | None = None
        self._count = 0
        self._idle: anyio.Event | None = None

    @property
    def running(self) -> bool:
        """Whether tasks can be started: the app's lifespan is between its start and its shutdown."""
        return self._group is not None

    def __len__(self) -> int:
        return self._count

    def start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run fn(*args) in the app's task group, in a copy of the caller's context (its request id).

        An exception is logged, never raised into the group (it would stop the app's other tasks).
        RuntimeError when the group is not running.
        """
        if self._group is None:
            raise RuntimeError("no background task group: the app's lifespan is not running")
        context = contextvars.copy_context()

        async def run() -> None:
            for var, value in context.items():  # whatever backend starts the task: the request's context
                var.set(value)
            try:
                await fn(*args)
            except Exception:  # see the docstring
                logger.exception("background task failed")
            finally:
                self._count -= 1
                if self._count == 0 and self._idle is not None:
                    self._idle.set()
                    self._idle = None

        self._count += 1
        self._group.start_soon(run)

    async def join(self, timeout: float) -> bool:  # noqa: ASYNC109 - the lifespan's grace, not a caller's scope
        """Wait (at most timeout seconds) until no background task is left; True when none is."""
        with anyio.move_on_after(timeout):
            while self._count:
                if self._idle is None:
                    self._idle = anyio.Event()
                await self._idle.wait()
        return self._count == 0

    @contextlib.asynccontextmanager
    async def serve(self, grace: Callable[[], float]) -> AsyncIterator[None]:
        """Own the task group for the body's length (the app's lifespan); at exit, wait up to grace()
        seconds (read then) for the tasks, then cancel them (a cancelled turn gives its lease back)."""
        async with anyio.create_task_group() as group:
            self._group = group
            try:
                yield
            finally:
                seconds = grace()
                if not await self.join(seconds):
                    logger.warning("%s background tasks still running after %.1fs: cancelled", self._count, seconds)
                self._group = None
                group.cancel_scope.cancel()


class Admission:
    """At most `width` requests that start a turn run their CPU-bound start at once, in arrival order.

    A request's start, from its body read to its first statement (routing, dependencies,
    validation, the pipeline's set-up), takes about half a millisecond of the event loop
    and never waits. A burst of a thousand arriving together is read in one pass of the
    loop, and each then runs its start in the next pass: every other request, a health
    check or a turn waiting to answer, waited behind all of them (480 ms at p99 for
    `/api/health` in section 7 of `make bench`). Admitted a few at a time, the loop goes
    back to its sockets between them.

    A request holds its place from `admit` until its first statement (app/core/db.py: `arun`
    calls the release: from there it waits on the database, not the loop), or until its
    response starts or ends, whichever is first. A place given back is free again only on
    the loop's next pass, so the requests already queued in this pass wait their turn too.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.admitted = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    async def admit(self) -> Callable[[], None]:
        """Wait for a place (FIFO); returns the release, idempotent, also set as the request's
        `admission_release` for its first statement."""
        if self.admitted >= self.width or self._waiting:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter  # the place is handed over with the result: self.admitted already counts it
            except BaseException:
                if not waiter.cancelled() and waiter.done():
                    self._free()  # handed over as this request was cancelled: pass it on
                else:
                    with contextlib.suppress(ValueError):  # cancelled while still queued
                        self._waiting.remove(waiter)
                raise
        else:
            self.admitted += 1
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                # Next pass, not now: the requests queued in this pass find no place free.
                asyncio.get_running_loop().call_soon(self._free)

        admission_release.set(release)
        return release

    def _free(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the place goes straight to the oldest waiter
                return
        self.admitted -= 1


class Runtime:
    """The bound on turns, the limiter of sync agents' threads and the wake-ups; see the module doc."""

    def __init__(self, settings: Settings):
        self.max_turns = settings.max_concurrent_turns
        self.admission = Admission(settings.admission_width)
        self.agent_threads = anyio.CapacityLimiter(settings.agent_threads)
        self.wakeups = Wakeups()
        self.streams = Hub()  # the drafts this process's turns write, and the streamed turns' task group
        self.active = 0
        self.stopping = False
        self.closing = False
        self.holders = 0  # leases held by this process's pipelines (a turn, or its give-back)
        self._settled: anyio.Event | None = None
        self.background = Background()
        self.grace = settings.shutdown_grace_seconds
        self.event_streams: collections.Counter[tuple[str, str]] = collections.Counter()  # open, by device
        self.event_streams_per_device = settings.event_streams_per_device
        self.clock: Callable[[], float] = time.monotonic  # seconds; the grace period's (tests set their own)
        self._stopped_at: float | None = None  # clock() at `stop()`

    @contextlib.asynccontextmanager
    async def serve(self, *tasks: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
        """The app's lifespan: background tasks run in its body; at exit no new turn starts,
        running ones get SHUTDOWN_GRACE_SECONDS, then are cancelled.

        tasks: run for the whole lifespan, outside the background count (the listener,
        app/streams/signals.py; the recovery pass, app/cleanup.py), cancelled once the
        background work is done.
        """
        async with anyio.create_task_group() as signals:
            for task in tasks:
                signals.start_soon(task)
            async with self.background.serve(self.grace_left):
                try:
                    yield
                finally:
                    self.stop()  # already, when a signal said so (app/stopping.py)
                    self.closing = True
            signals.cancel_scope.cancel()

    def stop(self) -> None:
        """The server stops accepting requests (SIGTERM or SIGINT, else the lifespan's exit).

        The event streams that only wait for news end now, and their pages reconnect to
        another instance (app/api/events.py; app/streams/reader.py for a reply followed from
        another instance's turn); a stream relaying a turn of this process goes on with it,
        under the server's grace period. Turns still start until `closing`. Idempotent.
        """
        if not self.stopping:
            self.stopping = True
            self._stopped_at = self.clock()
            self.wakeups.stop()
            self.streams.stop()

    def check_event_streams(self, key: tuple[str, str]) -> None:
        """TooManyStreams when device key (tenant, device) holds EVENT_STREAMS_PER_DEVICE event streams here."""
        if self.event_streams[key] >= self.event_streams_per_device:
            raise TooManyStreams(
                f"this device has {self.event_streams_per_device} event streams open here already: "
                "close a page of it, or retry",
                retry_after=5,
            )

    @contextlib.contextmanager
    def event_stream(self, key: tuple[str, str]) -> Iterator[bool]:
        """Count an open event stream of device key for the block; yields False (and counts nothing) when the
        device already holds EVENT_STREAMS_PER_DEVICE: requests checked at once can all pass the check."""
        if self.event_streams[key] >= self.event_streams_per_device:
            yield False
            return
        self.event_streams[key] += 1
        try:
            yield True
        finally:
            self.event_streams[key] -= 1
            if not self.event_streams[key]:
                del self.event_streams[key]

    def grace_left(self) -> float:
        """Seconds left of SHUTDOWN_GRACE_SECONDS, counted from `stop()` (SIGTERM), not from the
        lifespan's exit: the server's own wait for open connections (a streamed reply's) comes
        between the two, and counting from the exit gave turns the grace period twice."""
        if self._stopped_at is None:
            return self.grace
        return max(0.0, self.grace - (self.clock() - self._stopped_at))

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
    def holding(self, key: tuple[str, str]) -> Iterator[None]:
        """Count the held lease of device key (tenant, device) until its last turn is finished or the
        lease given back; meanwhile the device's stream readers here follow it (Hub.holds)."""
        self.holders += 1
        try:
            with self.streams.holding(key):
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

"""The process's streams: the drafts its turns write right now.

One `Hub` per process (Runtime.streams). A reader in the same process as the turn's
worker follows the writer in memory (no statement per delta); a reader elsewhere
follows the draft in PostgreSQL (app/streams/reader.py). A streamed request's turn
runs in the runtime's background task group (Runtime.background), so a client that
goes away does not cancel it; without a lifespan (Mangum on Lambda) there is none,
and a streaming request is answered as one body.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from app.streams.writer import DraftWriter

Key = tuple[str, str]  # (tenant, device)


class Hub:
    """Live writers by device; everything runs on the process's one loop."""

    def __init__(self) -> None:
        self._writers: dict[Key, DraftWriter] = {}
        self._events: dict[Key, anyio.Event] = {}
        # Whether this process's Listener is connected (app/streams/signals.py): then the
        # writers wait for a poke instead of polling for stop requests.
        self.listening = False
        # The server is stopping (Runtime.stop): a reader of a device whose lease this process
        # does not hold ends.
        self.stopped = False
        # Devices whose lease a pipeline of this process holds (their turns run or finish here).
        self._held: collections.Counter[Key] = collections.Counter()

    @contextlib.contextmanager
    def holding(self, key: Key) -> Iterator[None]:
        """Count the device's lease as held here for the block (Runtime.holding, around a drain of its turns)."""
        self._held[key] += 1
        try:
            yield
        finally:
            self._held[key] -= 1
            if not self._held[key]:
                del self._held[key]

    def holds(self, key: Key) -> bool:
        """Whether this process holds the device's lease: a turn of it runs, or is being finished, here."""
        return key in self._held

    def writer(self, key: Key) -> DraftWriter | None:
        """The writer of the device's turn running in this process, if any."""
        return self._writers.get(key)

    def publish(self, key: Key, writer: DraftWriter) -> None:
        self._writers[key] = writer
        self.notify(key)

    def retire(self, key: Key, writer: DraftWriter) -> None:
        if self._writers.get(key) is writer:
            del self._writers[key]
        self.notify(key)

    def poke(self, key: Key) -> None:
        """A stop was asked for the device (a notification): its writer here, if any, checks once."""
        writer = self._writers.get(key)
        if writer is not None:
            writer.check_soon()

    def poke_all(self) -> None:
        """Every writer here checks once (the listener has just (re)connected)."""
        for writer in list(self._writers.values()):
            writer.check_soon()

    def wake_all(self) -> None:
        """Every writer here looks again at how to wait (the listener is gone: they poll)."""
        for writer in list(self._writers.values()):
            writer.wake()

    def notify(self, key: Key) -> None:
        """Wake the device's readers in this process (new text, a writer came or went)."""
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def stop(self) -> None:
        """The server is stopping: wake every reader here, so that one of a device whose lease is not held here ends."""
        self.stopped = True
        for key in list(self._events):
            self.notify(key)

    async def wait(self, key: Key, seconds: float) -> bool:
        """Sleep until the device's stream changes in this process or seconds pass; True when woken."""
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = anyio.Event()
        with anyio.move_on_after(seconds):
            await event.wait()
            return True
        return False

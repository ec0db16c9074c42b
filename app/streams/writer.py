"""The draft writer: a streamed turn's text, in memory for readers here and in PostgreSQL for the rest.

The pipeline makes one per web turn (app/pipeline/turn.py `TurnRunner.run`). The agent's deltas go
to `add`; readers in this process see them at once (app/streams/hub.py). `run`, a task
beside the agent, writes what arrived to the draft with one fenced APPEND at most every
STREAM_FLUSH_MS while text arrives, and none while nothing does; the first write comes
no sooner than one interval after the turn started, and what is left at the end is not
written: the finish statement stores the whole reply. So an agent that answers within
one interval (or only has `handle`) costs no statement here.

Stop: an APPEND answers whether POST /api/chat/stop asked for this turn. While no text
arrives, the process's Listener (app/streams/signals.py) pokes the writer when a stop
is asked for its device, and the writer runs one CHECK; while no listener is connected, a
CHECK runs instead at most every STOP_CHECK_SECONDS and only when no statement ran for that
long. So a stop is seen within a round trip (STOP_CHECK_SECONDS plus one statement without
a listener), on whichever instance runs the turn; a turn that is never stopped costs no
check, and a streamed reply at most one statement per flush interval.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

from app.agents import AgentReply, StreamEvent
from app.core.db import arun
from app.core.engine import Engine
from app.errors import StoreUnavailable
from app.streams import statements as sql
from app.streams.hub import Hub

logger = logging.getLogger(__name__)

# Without a listener: at most this long between two looks at the stop flag while the agent sends nothing.
STOP_CHECK_SECONDS = 0.5


async def interrupt(engine: Engine, tenant: str, device: str, message_id: int) -> int | None:
    """BURST_MODE=interrupt: new message message_id asks the device's turn in flight to stop (INTERRUPT).

    Returns the id of the message whose turn was asked to stop, None when no other turn is in
    flight (or the store is unreachable: the message is stored and answered in its turn anyway).
    """
    params = {"tenant": tenant, "device": device, "before": message_id}
    try:
        row = await arun(engine, sql.INTERRUPT, params)
    except StoreUnavailable as err:
        logger.warning("could not ask the turn in flight to stop for message %s: %s", message_id, err)
        return None
    if not row["asked"]:
        return None
    logger.info("message %s stops the turn on message %s (BURST_MODE=interrupt)", message_id, row["message_id"])
    return row["message_id"]


async def collect(items: AsyncIterator[Any]) -> Any:
    """What an agent's stream ends with (its AgentReply), its deltas dropped: a turn nobody can watch."""
    async for item in items:
        if isinstance(item, AgentReply):
            return item
    return None


class DraftWriter:
    """The text (and tool events) of one turn so far; see the module doc.

    key: (epoch, attempt), which tells one run of a turn from another (a rerun after a
    crash has a new epoch and attempt); message_ids: the inbound messages it answers.
    """

    def __init__(
        self,
        engine: Engine,
        hub: Hub,
        *,
        tenant: str,
        device: str,
        epoch: int,
        attempt: int,
        message_ids: list[int],
        flush_seconds: float,
    ):
        self.engine, self.hub = engine, hub
        self.tenant, self.device = tenant, device
        self.epoch, self.attempt, self.message_ids = epoch, attempt, message_ids
        self.flush_seconds = flush_seconds
        self.text = ""
        self.events: list[dict[str, Any]] = []
        self.agent: str | None = None  # the agent writing now
        self.stopped = False  # a stop was asked for this turn (and the agent cancelled)
        self.lost = False  # an append found the lease gone: nothing more is written
        self.ended = False  # the agent is done; the finish statement has yet to run
        self.statements = 0
        self._flushed_text, self._flushed_events = 0, 0
        self._last_flush = self._last_statement = time.monotonic()
        self._changed = anyio.Event()
        self._check_due = False  # a poke: a stop was asked for this device
        self._stop_scope = anyio.CancelScope()

    @property
    def key(self) -> tuple[int, int]:
        return (self.epoch, self.attempt)

    # -- what the agent sends --------------------------------------------------------------

    async def consume(self, items: AsyncIterator[Any]) -> Any:
        """Feed an agent's stream into the draft; returns what it ended with (an AgentReply, else None)."""
        final: Any = None
        async for item in items:
            if isinstance(item, AgentReply):
                final = item
                break
            if isinstance(item, StreamEvent):
                self.add_event(item)
            elif isinstance(item, str):
                self.add(item)
            else:
                raise TypeError(f"an agent's stream yielded {type(item).__name__}, not str, StreamEvent or AgentReply")
        return final

    def begin_agent(self, key: str) -> None:
        """Another agent answers the same message (a handoff): its text follows after a space."""
        if self.agent is not None and self.text and not self.text.endswith((" ", "\n")):
            self.add(" ")
        self.agent = key

    def add(self, delta: str) -> None:
        if delta and not self.stopped:
            self.text += delta
            self._changed.set()
            self.hub.notify((self.tenant, self.device))

    def add_event(self, event: StreamEvent) -> None:
        if self.stopped:
            return
        item: dict[str, Any] = {"at": len(self.text), "type": event.kind, "call_id": event.call_id}
        if event.kind == "tool-call":
            item |= {"name": event.name, "input": event.input}
        else:
            item |= {"output": event.output}
        self.events.append(item)
        self._changed.set()
        self.hub.notify((self.tenant, self.device))

    # -- the turn's task -------------------------------------------------------------------

    def check_soon(self) -> None:
        """Look at the stop flag at once (the hub's poke: a stop was asked for this device)."""
        self._check_due = True
        self._changed.set()

    def wake(self) -> None:
        """Look again at how to wait (the listener came or went)."""
        self._changed.set()

    def stoppable(self) -> anyio.CancelScope:
        """The scope the agent runs in: a stop request cancels it."""
        return self._stop_scope

    async def run(self) -> None:
        """Write and watch until cancelled (the turn's task group ends it when the agent is done)."""
        while not self.lost:
            pending = len(self.text) > self._flushed_text or len(self.events) > self._flushed_events
            now = time.monotonic()
            if pending:
                delay = self._last_flush + self.flush_seconds - now
            elif self._check_due:
                delay = 0.0
            elif self.hub.listening:
                delay = math.inf  # until text arrives or a poke
            else:
                delay = self._last_statement + STOP_CHECK_SECONDS - now
            if delay > 0:
                if pending:  # text waits for its interval: later deltas join the same append
                    await anyio.sleep(delay)
                    continue
                with anyio.move_on_after(delay):
                    await self._changed.wait()
                self._changed = anyio.Event()
                continue
            self._check_due = False  # an append answers the stop question too
            try:
                stop = await (self._flush() if pending else self._check())
            except StoreUnavailable as err:  # the next interval tries again; the finish stores the reply
                logger.warning("could not write a reply draft: %s", err)
                self._last_statement = self._last_flush = time.monotonic()
                continue
            if stop:
                logger.info("stop asked for the turn on message %s; its partial reply is kept", self.message_ids[-1])
                self.stopped = True
                self._stop_scope.cancel()
                return

    async def _flush(self) -> bool:
        text, events = self.text[self._flushed_text :], self.events[self._flushed_events :]
        params = self._params() | {
            "delta": text,
            "events": json.dumps(events),
            "attempt": self.attempt,
        }
        row = await self._statement(sql.APPEND, params)
        self._last_flush = self._last_statement
        if row is None:  # fenced off: the lease is no longer ours
            logger.warning(
                "lease lost while streaming message %s: the draft is no longer written", self.message_ids[-1]
            )
            self.lost = True
            return False
        self._flushed_text += len(text)
        self._flushed_events += len(events)
        return bool(row["stop"])

    async def _check(self) -> bool:
        row = await self._statement(sql.CHECK, self._params())
        return bool(row and row["stop"])

    async def _statement(self, statement: str, params: dict[str, Any]) -> Any:
        self.statements += 1
        try:
            return await arun(self.engine, statement, params)
        finally:
            self._last_statement = time.monotonic()

    def _params(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "device": self.device,
            "epoch": self.epoch,
            "ids": self.message_ids,
        }

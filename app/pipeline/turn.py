"""One turn of a device: its agents beside the lease renewal under AGENT_TIMEOUT_SECONDS, and its fenced finish.

A turn is a task group: the agents' call, the lease renewal every LEASE_SECONDS / 3 and,
for a web turn, the draft writer that streams it (app/streams/writer.py). A timeout, a
lost lease, a stop request or a shutdown cancels the group, and so an async agent's
pending model call. The finish is one fenced statement, retried while the database is
unreachable for at most LEASE_SECONDS (app/ledger/statements.py: FINISH).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_delay, wait_exponential

from app import telemetry
from app.agents.runner import AgentRunner, failed, ms, stopped
from app.core.config import Settings
from app.errors import StoreUnavailable
from app.ledger import Finished, Lease, Ledger, Outcome, Turn
from app.pipeline.messages import OnWorking
from app.runtime import Runtime
from app.streams.writer import DraftWriter

logger = logging.getLogger(__name__)


class TurnRunner:
    """Runs and finishes the turns of the leases a Pipeline holds (one per Pipeline)."""

    def __init__(self, settings: Settings, ledger: Ledger, agents: AgentRunner, runtime: Runtime):
        self.settings, self.ledger, self.agents, self.runtime = settings, ledger, agents, runtime

    async def finish(
        self, lease: Lease, turn: Turn, outcome: Outcome, *, notify: bool, db_ms: int, total_ms: int
    ) -> Finished:
        """The fenced finish, retried while the database is unreachable, for at most LEASE_SECONDS.

        A retry is safe: the statement writes only while the lease is ours and the turn's
        messages are still pending, so one that was applied before its answer was lost
        finds nothing to do (LeaseLost; the waiter then reads the stored reply).
        """

        began = time.monotonic()
        try:
            # The first attempt outside tenacity: a retry policy costs a turn that needs none
            # about 1% of a server's CPU (bench/pyspy.py), and nearly every finish goes through.
            return await self.ledger.finish(lease, turn, outcome, notify=notify, db_ms=db_ms, total_ms=total_ms)
        except StoreUnavailable as err:
            logger.warning("finishing the turn on message %s failed, retrying: %s", turn.last.id, err)

        def failed(state: RetryCallState) -> None:
            logger.warning(
                "finishing the turn on message %s failed, retrying: %s",
                turn.last.id,
                state.outcome.exception() if state.outcome else None,
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(StoreUnavailable),
            # LEASE_SECONDS from the first attempt, which is spent already
            stop=stop_after_delay(max(0.0, self.settings.lease_seconds - (time.monotonic() - began))),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            before_sleep=failed,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self.ledger.finish(lease, turn, outcome, notify=notify, db_ms=db_ms, total_ms=total_ms)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    async def run(
        self, lease: Lease, turn: Turn, lock: str | None, context: dict[str, Any], on_working: OnWorking | None
    ) -> Outcome | None:
        """Run a turn's agents beside the lease renewal; None when the lease was lost.

        Past AGENT_TIMEOUT_SECONDS the turn is cancelled and fails for good (a sync agent
        cannot be stopped: what it returns later is dropped); after AGENT_MAX_ATTEMPTS
        started turns a message is failed without running it again.
        """
        if turn.attempt > self.settings.agent_max_attempts:
            logger.error("message %s failed: %s attempts started, none finished", turn.last.id, turn.attempt - 1)
            return failed(lock, f"gave up after {turn.attempt - 1} attempts", 0)
        started = time.perf_counter()
        timeout = self.settings.agent_timeout_seconds
        outcome: Outcome | None = None
        lost = False

        async def renew(group: anyio.abc.TaskGroup) -> None:
            nonlocal lost
            interval = max(self.settings.lease_seconds / 3, 0.05)
            while True:
                await anyio.sleep(interval)
                try:
                    if not await self.ledger.renew(lease):
                        telemetry.renewal("lost")
                        logger.warning("lease lost during the turn on message %s; the turn is cancelled", turn.last.id)
                        lost = True
                        group.cancel_scope.cancel()
                        return
                except StoreUnavailable as err:  # the fenced finish still refuses a lapsed lease
                    telemetry.renewal("failed")
                    logger.warning("lease renewal failed, the turn goes on: %s", err)
                    continue
                telemetry.renewal("renewed")
                self.working(group, on_working, turn)

        # A web turn streams: its draft is written for readers on any instance, and a stop
        # request (POST /api/chat/stop) cancels the agent through the writer's scope.
        writer = self.writer(lease, turn)
        stop_scope = writer.stoppable() if writer is not None else anyio.CancelScope()
        if writer is not None:
            self.runtime.streams.publish((lease.tenant, lease.device), writer)
        try:
            async with anyio.create_task_group() as group:
                self.working(group, on_working, turn)
                group.start_soon(renew, group)
                if writer is not None:
                    group.start_soon(writer.run)
                with anyio.move_on_after(timeout) as limit, stop_scope:
                    outcome = await self.agents.decide(turn, lease.tenant, lease.device, context, lock, writer=writer)
                group.cancel_scope.cancel()  # the renewal, the draft writer and any "typing..." call
        finally:
            if writer is not None:
                writer.ended = True
                self.runtime.streams.retire((lease.tenant, lease.device), writer)
        if lost:
            return None
        if writer is not None and stop_scope.cancelled_caught:
            return stopped(lock, writer, ms(started))
        if writer is not None and writer.events and outcome is not None:  # kept with the reply, for readers
            outcome = dataclasses.replace(outcome, metadata={**outcome.metadata, "stream_events": writer.events})
        if limit.cancelled_caught or outcome is None:
            logger.error("agent turn on message %s timed out after %ss", turn.last.id, timeout)
            return failed(lock, f"AgentTimeout: no answer within {timeout:g} s", ms(started))
        return outcome

    def writer(self, lease: Lease, turn: Turn) -> DraftWriter | None:
        """A draft writer for a web turn (the channels that cannot stream get none)."""
        if (turn.last.metadata.get("channel") or "web") != "web":
            return None
        return DraftWriter(
            self.ledger.engine,
            self.runtime.streams,
            tenant=lease.tenant,
            device=lease.device,
            epoch=lease.epoch,
            attempt=turn.attempt,
            message_ids=[message.id for message in turn.messages],
            flush_seconds=self.settings.stream_flush_ms / 1000,
        )

    @staticmethod
    def working(group: anyio.abc.TaskGroup, on_working: OnWorking | None, turn: Turn) -> None:
        """Start the hook beside the turn: a slow channel API must never delay a lease renewal."""
        if on_working is None:
            return

        async def call() -> None:
            try:
                await call_hook(on_working, turn.last)
            except Exception:  # a typing indicator never fails a turn
                logger.warning("the working hook failed on message %s", turn.last.id, exc_info=True)

        group.start_soon(call)


async def call_hook(hook: Callable[..., Any], *args: Any) -> None:
    """Await a coroutine function hook; run a plain one on a worker thread (it may block)."""
    if inspect.iscoroutinefunction(hook):
        await hook(*args)
        return
    result = await anyio.to_thread.run_sync(hook, *args)
    if inspect.isawaitable(result):
        await result

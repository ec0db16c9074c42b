"""The message pipeline: route each message to the agent that owns the conversation.

Exactly once and in order per device: a message is recorded and the device's
lease taken in one statement, agents run with no transaction open while the
worker renews the lease every LEASE_SECONDS / 3, and the result is written in one
fenced statement. A message that finds the lease taken waits for the holder, who
answers the device's pending messages in id order (one at a time, or merged into
one turn with BURST_MODE=merge; with BURST_MODE=interrupt a new message also stops the
streamed turn in flight first, its partial reply kept as stopped).

Everything here is a coroutine on the process's event loop: a turn is a task group
(the agent, and the lease renewal beside it) under AGENT_TIMEOUT_SECONDS, so a
timeout, a lost lease or a shutdown cancels an async agent's pending model call. A
sync agent runs on a worker thread under AGENT_THREADS; it cannot be stopped, and
what it returns after its turn was given up is dropped. A waiter holds no thread:
it sleeps until a turn of its device finishes in this process (app/runtime.py) or
its next poll is due.

Here: a message's way through (claim, wait, drain the device's turns, give the lease
back). A turn and its finish: app/pipeline/turn.py. The inbound message, its result and
the channels' hooks: app/pipeline/messages.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio

from app import telemetry, validation
from app.agents import HUMAN, MANAGER, Registry
from app.agents.runner import FAILURE_REPLY, AgentRunner, ms
from app.core.config import Settings
from app.core.engine import Engine
from app.core.logging import device_hash
from app.errors import LeaseLost, StoreUnavailable
from app.ledger import Answer, Lease, Ledger
from app.pipeline.messages import ChannelReplier, Inbound, OnReply, OnWorking, Result, answered
from app.pipeline.turn import TurnRunner, call_hook
from app.runtime import Runtime
from app.streams.writer import interrupt

__all__ = ["ChannelReplier", "Inbound", "OnReply", "OnWorking", "Pipeline", "Result"]

logger = logging.getLogger(__name__)


# A waiter polls its message at most this often once its backoff has grown (a finished
# turn in this process wakes it at once): about one statement per second per waiting request.
POLL_CAP_SECONDS = 1.0


class Pipeline:
    """Runs inbound messages through the ledger and the agents."""

    def __init__(self, engine: Engine, registry: Registry, settings: Settings, runtime: Runtime | None = None):
        self.registry = registry
        self.settings = settings
        self.runtime = runtime or Runtime(settings)
        self.agents = AgentRunner(registry, self.runtime.agent_threads)
        self.ledger = Ledger(
            engine,
            lease_seconds=settings.lease_seconds,
            default_ttl=settings.default_session_ttl,
            context_cap=settings.context_list_cap,
            history=settings.agent_history_messages,
            batch=settings.burst_max_messages if settings.burst_mode in ("merge", "interrupt") else 1,
            max_attempts=settings.agent_max_attempts,
            rate_limit=settings.rate_limit_per_device,
        )
        self.turns = TurnRunner(settings, self.ledger, self.agents, self.runtime)

    async def handle(
        self,
        inbound: Inbound,
        *,
        wait: bool = True,
        on_reply: OnReply | None = None,
        stateless: bool = True,
        on_working: OnWorking | None = None,
        on_claimed: Callable[[int | None], None] | None = None,
    ) -> Result:
        """Record and answer one message; with wait, wait (bounded by CHAT_WAIT_SECONDS) until it is answered.

        on_claimed(message_id) is called once the message is stored (or known: a duplicate),
        before any agent runs: a streaming route starts its response there.

        When the store is unreachable the manager answers statelessly, or with
        stateless=False StoreUnavailable propagates (a webhook asks for redelivery).
        Raises IdempotencyKeyReused when the external id is known with another text, RateLimited
        past RATE_LIMIT_PER_DEVICE (nothing stored).
        """
        tenant = validation.tenant_id(inbound.tenant_id)
        device = validation.device_id(inbound.device_id)
        validation.message_text(inbound.text)
        started = time.perf_counter()
        message_id: int | None = None
        try:
            with telemetry.span("agent_sessions.claim", self.settings, tenant, device):
                claim = await self.ledger.claim(
                    tenant,
                    device,
                    inbound.text,
                    external_id=inbound.external_id,
                    metadata=inbound.metadata,
                    sent_at=inbound.sent_at,
                )
            claim_ms = ms(started)
            if on_claimed is not None:
                on_claimed(claim.message_id or claim.duplicate_of)
            if claim.duplicate is not None:
                return answered(claim.duplicate, claim.duplicate_of, duplicate=True)
            if claim.held is not None:  # a person holds the conversation: stored for them, no agent runs
                return answered(claim.held, claim.message_id)
            message_id = claim.message_id or claim.duplicate_of
            if claim.lease is None and claim.message_id is not None and self.settings.burst_mode == "interrupt":
                await interrupt(self.ledger.engine, tenant, device, claim.message_id)  # then answered with the rest
            if claim.lease is not None:
                drained = await self._drain(
                    claim.lease, on_reply, on_working, own=claim.message_id, db_ms=claim_ms, started=started
                )
                answer = drained.get(message_id) if message_id is not None else None
                if answer is not None:
                    return answered(answer, message_id, duplicate=claim.message_id is None)
            if not wait or message_id is None:
                return Result("queued", message_id=message_id, duplicate=claim.message_id is None)
            with telemetry.waiting(self.settings, tenant, device) as waited:
                result = await self._wait(
                    tenant, device, message_id, on_reply, on_working, duplicate=claim.message_id is None
                )
                waited.end(result.status)
            return result
        except StoreUnavailable as err:
            if not stateless:
                raise
            if message_id is not None:  # stored: it will be answered in order, never also statelessly
                logger.warning("session store unavailable after message %s was stored: %s", message_id, err)
                return Result("queued", message_id=message_id)
            logger.warning("session store unavailable, answering statelessly: %s", err)
            return await self.stateless(inbound)

    async def _wait(
        self,
        tenant: str,
        device: str,
        message_id: int,
        on_reply: OnReply | None,
        on_working: OnWorking | None,
        *,
        duplicate: bool,
    ) -> Result:
        deadline = time.monotonic() + self.settings.chat_wait_seconds
        delay = 0.01
        while time.monotonic() < deadline:
            # Woken at once when a turn of this device finishes in this process; otherwise
            # (the holder is another instance) the poll backs off to one a second.
            await self.runtime.wakeups.wait((tenant, device), min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, POLL_CAP_SECONDS)
            poll = await self.ledger.poll(tenant, device, message_id)
            answer = poll.answer
            if poll.lease is not None:  # a lease we won must be drained (and so freed) before we leave
                telemetry.lease_taken()
                answer = (await self._drain(poll.lease, on_reply, on_working, own=message_id)).get(message_id) or answer
            if answer is not None:
                return answered(answer, message_id, duplicate=duplicate)
        logger.info("message %s still queued after %ss", message_id, self.settings.chat_wait_seconds)
        return Result("queued", message_id=message_id, duplicate=duplicate)

    async def drain(
        self, tenant: str, device: str, on_reply: OnReply | None = None, on_working: OnWorking | None = None
    ) -> int:
        """Handle a device's pending messages if its lease is free (crash recovery); returns how many."""
        lease = await self.ledger.take_free_lease(tenant, device)
        return 0 if lease is None else len(await self._drain(lease, on_reply, on_working))

    async def recover(self, on_reply: OnReply | None = None, *, limit: int = 100, deadline: float | None = None) -> int:
        """Handle messages a crashed worker left pending once their lease expired; returns how many.

        deadline: a time.monotonic() after which no further device is started (the cleanup
        run's CLEANUP_MAX_SECONDS); the ones left wait for the next run.
        """
        total = 0
        for tenant, device in await self.ledger.stale_devices(limit):
            if deadline is not None and time.monotonic() >= deadline:
                logger.info("recovery stopped at the cleanup's deadline; the rest waits for the next run")
                break
            total += await self.drain(tenant, device, on_reply)
        return total

    async def _drain(
        self,
        lease: Lease,
        on_reply: OnReply | None,
        on_working: OnWorking | None = None,
        *,
        own: int | None = None,
        db_ms: int = 0,
        started: float | None = None,
    ) -> dict[int, Answer]:
        """Handle pending turns in order while holding the lease; the last finish frees it.

        own: the message this request stored (None: none, a recovery). A turn that answers
        any other message notifies that message's waiter, on whichever instance it waits.

        Cancelled (shutdown, a request's task cancelled) in the middle of a turn, the
        lease is given back at once (fenced): the next holder runs the turn again with
        its attempt counted, as after a crash, without waiting for the lease to lapse.
        """
        answers: dict[int, Answer] = {}
        key = (lease.tenant, lease.device)
        # A shutdown waits for the give-back before closing the pool; a stream reader here follows
        # the device until its turns are finished (Hub.holds).
        with self.runtime.holding(key):
            try:
                await self._drain_turns(lease, answers, on_reply, on_working, own=own, db_ms=db_ms, started=started)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._give_back(lease)
                raise
            finally:
                self.runtime.wakeups.notify(key)
                self.runtime.streams.notify(key)
        return answers

    async def _give_back(self, lease: Lease) -> None:
        try:
            await self.ledger.release(lease)
        except Exception as err:  # noqa: BLE001 - the lease lapses on its own after LEASE_SECONDS
            logger.warning("could not give the lease back after an interrupted turn: %s", err)

    async def _drain_turns(
        self,
        lease: Lease,
        answers: dict[int, Answer],
        on_reply: OnReply | None,
        on_working: OnWorking | None,
        *,
        own: int | None,
        db_ms: int,
        started: float | None,
    ) -> None:
        turn = lease.first or await self.ledger.next_turn(lease)
        lock, context = lease.lock, lease.context
        while turn is not None:
            if lock == HUMAN:
                # Taken over before this turn started: NEXT holds the messages for the person (and
                # frees the lease); a turn comes back only if the takeover has ended meanwhile.
                turn, lock = await self.ledger.next_turn(lease), None
                continue
            started = started or time.perf_counter()
            with telemetry.turn(self.settings, lease, turn, lock or MANAGER) as traced:
                outcome = await self.turns.run(lease, turn, lock, context, on_working)
                traced.outcome(outcome)
            if outcome is None:
                return
            finish_started = time.perf_counter()
            try:
                with telemetry.span("agent_sessions.finish", self.settings, lease.tenant, lease.device):
                    # Another request's message: it waits for this reply, maybe on another instance.
                    notify = any(message.id != own for message in turn.messages)
                    finished = await self.turns.finish(
                        lease, turn, outcome, notify=notify, db_ms=db_ms, total_ms=ms(started)
                    )
            except LeaseLost:
                # The lease lapsed (another holder has the device), or the turn's message is no longer
                # pending: a person took the conversation over while the agent ran, and it is held for
                # them. NEXT, fenced by the epoch, tells the two apart: it starts the device's next
                # turn or frees a lease still ours, and finds nothing when the lease is another's.
                # Returning at once left a taken-over device's lease to lapse: a release with
                # answer_held then answered nothing for LEASE_SECONDS.
                telemetry.lease_lost("finish")
                logger.warning("message %s is no longer this turn's to answer (lease lost or taken over)", turn.last.id)
                try:
                    turn, lock = await self.ledger.next_turn(lease), None
                except StoreUnavailable:
                    return  # the lease lapses; the next holder handles the device
                continue
            for message in turn.messages:
                answers[message.id] = finished.answer
            self.runtime.wakeups.notify((lease.tenant, lease.device))
            self.runtime.streams.notify((lease.tenant, lease.device))  # stream readers here read the reply
            lock, context = finished.answer.lock_agent, finished.context
            if finished.held:
                logger.info("message %s taken over while the agent ran: held, its reply dropped", turn.last.id)
                turn, lock = (await self.ledger.next_turn(lease) if finished.kept else None), None
                continue
            logger.info(
                "message handled",
                extra={
                    "device": device_hash(self.settings, lease.device),
                    "tenant": lease.tenant,
                    "agent": outcome.agent,
                    "event": outcome.event,
                    "outcome": outcome.status,
                    "db_ms": db_ms,
                    "agent_ms": outcome.elapsed_ms,
                    "total_ms": ms(started),
                    "messages": len(turn.messages),
                    "attempt": turn.attempt,
                },
            )
            if on_reply is not None:
                try:
                    await call_hook(on_reply, turn.last, finished.answer)
                except Exception:  # delivery problems are the channel's to record
                    logger.exception("delivering the reply to message %s failed", turn.last.id)
            turn = finished.next or (await self.ledger.next_turn(lease) if finished.kept else None)
            db_ms, started = ms(finish_started), None

    async def stateless(self, inbound: Inbound) -> Result:
        """Answer without the store: the manager replies and nothing is kept."""
        with anyio.move_on_after(self.settings.agent_timeout_seconds):
            reply = await self.agents.answer_alone(inbound.text, inbound.metadata, inbound.tenant_id, inbound.device_id)
            return Result("degraded", reply, MANAGER)
        return Result("degraded", FAILURE_REPLY, MANAGER)

"""The message pipeline: route each message to the agent that owns the conversation.

Exactly once and in order per device: a message is recorded and the device's
lease taken in one statement, agents run with no transaction open, and the
result is written in one fenced statement. A message that finds the lease taken
waits for the holder, who drains the device's pending messages in order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from app import validation
from app.agents import MANAGER, AgentInput, AgentReply, Handoff, Registry, Release
from app.context import ContextPatch, normalized
from app.core.config import Settings
from app.core.logging import device_hash
from app.errors import LeaseLost, StoreUnavailable
from app.ledger import Answer, Lease, Ledger, Outcome, Pending

logger = logging.getLogger(__name__)

MAX_HANDOFFS = 3
FAILURE_REPLY = "Sorry, something went wrong on our side. Please try again."

OnReply = Callable[[Pending, Answer], None]
# Called when a turn starts on a message and again at each lease renewal while the
# agent runs (about every LEASE_SECONDS / 3); a channel shows "typing..." with it.
OnWorking = Callable[[Pending], None]


@dataclass(frozen=True)
class Inbound:
    """A message as a channel hands it over.

    metadata keys the pipeline reads: "channel" ("web", "whatsapp"), "choice_id" (a
    tapped choice) and "attachments" (a list of {"type", "id", ...} dicts); the rest
    is stored with the message and handed to the channel with the reply.
    """

    tenant_id: str
    device_id: str
    text: str
    external_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    sent_at: datetime | None = None


@dataclass(frozen=True)
class Result:
    """What became of one inbound message."""

    status: str  # "answered", "queued" (stored, answer pending) or "degraded" (store unreachable)
    reply: str | None = None
    agent: str | None = None
    lock_agent: str | None = None
    lock_expires_at: datetime | None = None
    message_id: int | None = None
    duplicate: bool = False
    merged: bool = False  # answered together with other messages of a burst (BURST_MODE=merge)
    choices: tuple[dict[str, str], ...] = ()  # {"id", "title"} offered with the reply

    @property
    def degraded(self) -> bool:
        return self.status == "degraded"


def _answered(answer: Answer, message_id: int | None, *, duplicate: bool = False) -> Result:
    return Result(
        "answered", answer.reply, answer.agent, answer.lock_agent, answer.lock_expires_at, message_id, duplicate
    )


class Pipeline:
    """Runs inbound messages through the ledger and the agents."""

    def __init__(self, engine: Engine, registry: Registry, settings: Settings):
        self.registry = registry
        self.settings = settings
        self.ledger = Ledger(
            engine,
            lease_seconds=settings.lease_seconds,
            default_ttl=settings.default_session_ttl,
            context_cap=settings.context_list_cap,
        )

    def handle(
        self, inbound: Inbound, *, wait: bool = True, on_reply: OnReply | None = None, stateless: bool = True,
        on_working: OnWorking | None = None,
    ) -> Result:
        """Record and answer one message; with wait, block (bounded) until it is answered.

        When the store is unreachable the manager answers statelessly, or with
        stateless=False StoreUnavailable propagates (a webhook asks for redelivery).
        """
        tenant = validation.tenant_id(inbound.tenant_id)
        device = validation.device_id(inbound.device_id)
        validation.message_text(inbound.text)
        started = time.perf_counter()
        try:
            claim = self.ledger.claim(
                tenant, device, inbound.text, external_id=inbound.external_id, metadata=inbound.metadata
            )
            claim_ms = _ms(started)
            if claim.duplicate is not None:
                return _answered(claim.duplicate, claim.duplicate_of, duplicate=True)
            message_id = claim.message_id or claim.duplicate_of
            if claim.lease is not None:
                drained = self._drain(tenant, device, claim.lease, on_reply, db_ms=claim_ms, started=started,
                                      on_working=on_working)
                answer = drained.get(message_id)
                if answer is not None:
                    return _answered(answer, message_id, duplicate=claim.message_id is None)
            if not wait or message_id is None:
                return Result("queued", message_id=message_id, duplicate=claim.message_id is None)
            return self._wait(tenant, device, message_id, on_reply, duplicate=claim.message_id is None)
        except StoreUnavailable as err:
            if not stateless:
                raise
            logger.warning("session store unavailable, answering statelessly: %s", err)
            return self.stateless(inbound)

    def _wait(self, tenant: str, device: str, message_id: int, on_reply: OnReply | None, *, duplicate: bool) -> Result:
        deadline = time.monotonic() + self.settings.chat_wait_seconds
        delay = 0.01
        while time.monotonic() < deadline:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.25)
            poll = self.ledger.poll(tenant, device, message_id)
            answer = poll.answer
            if poll.lease is not None:  # a lease we won must be drained (and so freed) before we leave
                answer = self._drain(tenant, device, poll.lease, on_reply).get(message_id) or answer
            if answer is not None:
                return _answered(answer, message_id, duplicate=duplicate)
        logger.info("message %s still queued after %ss", message_id, self.settings.chat_wait_seconds)
        return Result("queued", message_id=message_id, duplicate=duplicate)

    def drain(self, tenant: str, device: str, on_reply: OnReply | None = None) -> int:
        """Handle a device's pending messages if its lease is free (crash recovery); returns how many."""
        poll = self.ledger.poll(tenant, device, message_id=0)
        return 0 if poll.lease is None else len(self._drain(tenant, device, poll.lease, on_reply))

    def recover(self, on_reply: OnReply | None = None, *, limit: int = 100) -> int:
        """Handle messages a crashed worker left pending once their lease expired; returns how many."""
        return sum(self.drain(tenant, device, on_reply) for tenant, device in self.ledger.stale_devices(limit))

    def _drain(
        self,
        tenant: str,
        device: str,
        lease: Lease,
        on_reply: OnReply | None,
        *,
        db_ms: int = 0,
        started: float | None = None,
        on_working: OnWorking | None = None,
    ) -> dict[int, Answer]:
        """Handle pending messages in order while holding the lease; the last finish frees it."""
        answers: dict[int, Answer] = {}
        current = lease.first or self.ledger.next_pending(tenant, device, lease.epoch)
        lock, context = lease.lock, lease.context
        while current is not None:
            started = started or time.perf_counter()
            if on_working is not None:
                on_working(current)
            outcome = self.decide(current.text, tenant, device, context, lock)
            finish_started = time.perf_counter()
            try:
                finished = self.ledger.finish(
                    tenant, device, lease.epoch, current, outcome, db_ms=db_ms, total_ms=_ms(started)
                )
            except LeaseLost:
                logger.warning("lease lost on message %s; the new holder will handle it", current.id)
                break
            answers[current.id] = finished.answer
            logger.info(
                "message handled",
                extra={
                    "device": device_hash(self.settings, device), "tenant": tenant, "agent": outcome.agent,
                    "event": outcome.event, "outcome": outcome.status, "db_ms": db_ms,
                    "agent_ms": outcome.elapsed_ms, "total_ms": _ms(started),
                },
            )
            if on_reply is not None:
                try:
                    on_reply(current, finished.answer)
                except Exception:  # noqa: BLE001 - delivery problems are the channel's to record
                    logger.exception("delivering the reply to message %s failed", current.id)
            lock, context, current = finished.answer.lock_agent, finished.context, finished.next
            db_ms, started = _ms(finish_started), None
        return answers

    def decide(
        self, text: str, tenant: str, device: str, context: dict[str, Any], lock: str | None
    ) -> Outcome:
        """Run the lock holder (or the manager) and any agents it hands off to; no database work."""
        started = time.perf_counter()
        agent_before = lock
        if lock is not None and lock not in self.registry:
            logger.warning("lock names unknown agent %s; the manager takes over and the lock is released", lock)
            lock = None
        key, patch, replies, tools, ttl = lock or MANAGER, ContextPatch(), [], [], None
        view = normalized(context)
        for _ in range(MAX_HANDOFFS + 1):
            try:
                answer = self.registry[key].handle(AgentInput(text, tenant, device, view, lock))
                if not isinstance(answer, AgentReply):
                    raise TypeError(f"agent {key} returned {type(answer).__name__}, not AgentReply")
                patch = patch.then(ContextPatch.parse(answer.context))
            except Exception as err:  # noqa: BLE001 - an agent's failure must not fail the request
                logger.exception("agent %s failed", key)
                return Outcome(
                    FAILURE_REPLY, key, agent_before, agent_before, None, {}, tools,
                    _ms(started), status="failed", error=f"{type(err).__name__}: {err}"[:500],
                )
            replies.append(answer.reply)
            tools.extend(answer.tools_used)
            action = answer.lock
            if isinstance(action, Handoff) and action.to in self.registry and action.to != key:
                lock, key, ttl = action.to, action.to, validation.ttl(action.ttl)
                continue
            if isinstance(action, Handoff):
                logger.error("agent %s handed off to unknown agent %s; lock unchanged", key, action.to)
            elif isinstance(action, Release):
                lock = None
            break
        reply = " ".join(part for part in replies if part) or "…"
        return Outcome(reply, key, agent_before, lock, ttl, patch.as_json(), tools, _ms(started))

    def stateless(self, inbound: Inbound) -> Result:
        """Answer without the store: the manager replies and nothing is kept."""
        try:
            answer = self.registry[MANAGER].handle(
                AgentInput(inbound.text, inbound.tenant_id, inbound.device_id, normalized({}), None)
            )
            reply = answer.reply
        except Exception:  # noqa: BLE001
            logger.exception("manager failed in stateless mode")
            reply = FAILURE_REPLY
        return Result("degraded", reply, MANAGER)


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)

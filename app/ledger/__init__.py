"""The message ledger: claim, poll, renew and finish a device's turns, one round trip each.

A worker claims a device's lease in a short statement, runs its agents with no
transaction open (renewing the lease while they think), and writes everything back
in one finish statement that is fenced by the lease epoch: a worker that outlived
its lease cannot write. The statements and their guarantees: app/ledger/statements.py.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app import telemetry
from app.agents import HUMAN, HistoryItem
from app.core.db import arun
from app.core.engine import Engine
from app.errors import IdempotencyKeyReused, LeaseLost, RateLimited
from app.ledger import statements as sql
from app.sessions import new_session_id

# Statuses of an inbound message that nobody will answer (again) unless told to.
SETTLED = ("done", "failed", "held")

# A holder that keeps finding a claim racing its "is anything left?" read stops
# asking after this many reads; the lease then lapses and a waiter takes it.
NEXT_READS = 20


@dataclass(frozen=True)
class Pending:
    """An inbound message waiting to be handled; attempts counts the turns started on it."""

    id: int
    text: str
    metadata: dict[str, Any]
    attempts: int = 1
    session_id: str | None = None


@dataclass(frozen=True)
class Turn:
    """The messages one agent turn answers (several in BURST_MODE=merge) and the history before them."""

    messages: tuple[Pending, ...]
    history: tuple[HistoryItem, ...] = ()

    @property
    def last(self) -> Pending:
        return self.messages[-1]

    @property
    def attempt(self) -> int:
        return max(message.attempts for message in self.messages)


@dataclass(frozen=True)
class Lease:
    """A device claimed by this worker: the fencing epoch and the session it saw."""

    tenant: str
    device: str
    epoch: int
    lock: str | None
    context: dict[str, Any]
    first: Turn | None  # None: read the next turn afresh (Ledger.next_turn)


@dataclass(frozen=True)
class Answer:
    """A stored reply, what it offers the person, and the device's lock as it stands after it.

    held: no reply: a person holds the conversation (operator takeover) and the
    message waits for them; reply is None and agent is "human".
    """

    reply: str | None
    agent: str | None
    lock_agent: str | None
    lock_expires_at: datetime | None
    reply_id: int | None = None
    choices: tuple[dict[str, str], ...] = ()
    template: dict[str, Any] | None = None
    merged: bool = False
    held: bool = False
    stopped: bool = False  # POST /api/chat/stop ended the turn: reply is the partial text


def held(lock_agent: str | None, lock_expires_at: datetime | None) -> Answer:
    """The answer to a message held for a person: no reply."""
    return Answer(None, HUMAN, lock_agent, lock_expires_at if lock_agent else None, held=True)


@dataclass(frozen=True)
class Claim:
    message_id: int | None  # None: a duplicate external id
    lease: Lease | None  # set when this worker now holds the device
    duplicate: Answer | None  # the first reply (or held), for a duplicate that was already settled
    duplicate_of: int | None = None
    held: Answer | None = None  # the message was stored held: a person holds the conversation


@dataclass(frozen=True)
class Poll:
    answer: Answer | None
    lease: Lease | None


@dataclass(frozen=True)
class Finished:
    answer: Answer
    context: dict[str, Any]
    next: Turn | None  # the next turn, started under the same lease
    kept: bool  # the lease is still ours (with next None: read the next turn afresh)
    held: bool = False  # taken over while the agents ran: no reply stored, the messages held


@dataclass(frozen=True)
class Outcome:
    """What the agents decided for one turn, ready to be written."""

    reply: str
    agent: str
    agent_before: str | None
    agent_after: str | None
    ttl: int | None
    patch: dict[str, Any]
    tools_used: list[str]
    elapsed_ms: int
    status: str = "done"
    error: str | None = None
    choices: tuple[dict[str, str], ...] = ()
    template: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def event(self) -> str | None:
        """The audit event this outcome makes of the lock."""
        before, after = self.agent_before, self.agent_after
        if before == after:
            return "refresh" if after else None
        if before is None:
            return "set"
        return "release" if after is None else "handoff"


def request_hash(text: str, metadata: dict[str, Any]) -> str:
    """SHA-256 (hex) of what a request asks: its text and the choice it taps."""
    return hashlib.sha256(json.dumps([text, metadata.get("choice_id")]).encode()).hexdigest()


def _history(value: Any, answered: dict[int, str] | None = None) -> tuple[HistoryItem, ...]:
    """History items from the statements' jsonb; answered names the agent of messages a finish just wrote."""
    items = json.loads(value) if isinstance(value, str) else value or ()
    answered = answered or {}
    return tuple(
        HistoryItem(
            item["role"],
            item["content"],
            answered.get(item["id"], item["agent"]),
            datetime.fromisoformat(item["created_at"]),
            bool(item.get("stopped")),
        )
        for item in items
    )


def _turn(batch: Any, history: Any, answered: dict[int, str] | None = None) -> Turn | None:
    if not batch:
        return None
    messages = tuple(
        Pending(item["id"], item["content"], item["metadata"] or {}, item["attempts"], item["session_id"])
        for item in batch
    )
    return Turn(messages, _history(history, answered))


def _answer(row: dict[str, Any], prefix: str, status: str) -> Answer:
    if status == "held":
        return held(row[f"{prefix}_lock_agent"], row[f"{prefix}_lock_expires_at"])
    metadata = row[f"{prefix}_metadata"] or {}
    return Answer(
        row[f"{prefix}_reply"],
        row[f"{prefix}_agent"],
        row[f"{prefix}_lock_agent"],
        row[f"{prefix}_lock_expires_at"],
        choices=tuple(metadata.get("choices") or ()),
        template=metadata.get("template"),
        merged=bool(metadata.get("merged")),
        stopped=bool(metadata.get("stopped")),
    )


class Ledger:
    """SQL for the pipeline, as coroutines; every method is one round trip (next_turn: one, rarely a few)."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease_seconds: int,
        default_ttl: int,
        context_cap: int,
        history: int = 20,
        batch: int = 1,
        max_attempts: int = 2,
        rate_limit: int = 0,
    ):
        self.engine = engine
        self.lease_seconds = lease_seconds
        self.default_ttl = default_ttl
        self.context_cap = context_cap
        self.history = history
        self.batch = batch
        self.max_attempts = max_attempts
        self.rate_limit = rate_limit  # new messages per device per minute; 0: no limit

    async def _row(self, statement: str, params: dict[str, Any], *, idempotent: bool = False) -> Any:
        params |= {
            "lease": self.lease_seconds,
            "default_ttl": self.default_ttl,
            "history": self.history,
            "batch": self.batch,
            "max_attempts": self.max_attempts,
            "rate_limit": self.rate_limit,
        }
        return await arun(self.engine, statement, params, idempotent=idempotent)

    async def claim(
        self,
        tenant: str,
        device: str,
        text: str,
        *,
        external_id: str | None,
        metadata: dict[str, Any],
        sent_at: datetime | None = None,
    ) -> Claim:
        """Store a message and take the device's lease if it is free.

        Raises IdempotencyKeyReused (nothing stored) when external_id is known with another request,
        RateLimited (nothing stored or changed) past rate_limit new messages in the device's minute.
        A claim with an external_id whose connection turned out dead is run once more on a fresh one.
        """
        digest = request_hash(text, metadata)
        params = {
            "tenant": tenant,
            "device": device,
            "content": text,
            "external_id": external_id,
            "metadata": json.dumps(metadata),
            "hash": digest,
            "sent_at": sent_at,
        }
        # With an external id a claim can run again after a disconnect: a first run that was applied is
        # found (a duplicate, its lease left to lapse), not stored twice. Without one it is not retried.
        row = await self._row(
            sql.CLAIM,
            params | {"token": uuid.uuid4().hex, "new_session": new_session_id()},
            idempotent=external_id is not None,
        )
        if row["limited"]:
            telemetry.rate_limited("device")
            raise RateLimited("too many messages from this device; nothing was stored", row["retry_after"])
        if row["new_id"] is None and row["dup_id"] is None and external_id is not None:
            # The same external id was stored after this statement's snapshot was taken (a
            # concurrent retry): read it again, now visible. A lease the first read won stays ours.
            won = row
            row = await self._row(sql.CLAIM, params | {"token": uuid.uuid4().hex, "new_session": new_session_id()})
            if won["lease_epoch"] is not None and row["lease_epoch"] is None:
                row = {
                    **row,
                    "lease_epoch": won["lease_epoch"],
                    "lock_agent": won["lock_agent"],
                    "context": won["context"],
                    "first": False,
                }
        if row["dup_id"] is not None and row["dup_hash"] not in (None, digest):
            raise IdempotencyKeyReused("this idempotency key was used with another request; nothing was stored")
        new_id = row["new_id"]
        lease = None
        if row["lease_epoch"] is not None:
            first = None
            if row["first"]:
                pending = Pending(new_id, text, metadata, 1, row["first_session"])
                first = Turn((pending,), _history(row["history"]))
            lease = Lease(tenant, device, row["lease_epoch"], row["lock_agent"], row["context"], first)
        duplicate = None
        if new_id is None and row["dup_status"] in SETTLED:
            duplicate = _answer(row, "dup", row["dup_status"])
        on_hold = held(row["lock_agent"], row["lock_expires_at"]) if row["held"] else None
        return Claim(new_id, lease, duplicate, row["dup_id"], on_hold)

    async def poll(self, tenant: str, device: str, message_id: int) -> Poll:
        """A waiter's look at its message; takes the lease when it came free with messages pending."""
        row = await self._row(sql.POLL, {"tenant": tenant, "device": device, "message_id": message_id})
        answer = None
        if row["status"] in SETTLED:
            answer = _answer(row, "mine", row["status"])
        lease = None
        if row["lease_epoch"] is not None:
            lease = Lease(tenant, device, row["lease_epoch"], row["lease_lock_agent"], row["context"], None)
        return Poll(answer, lease)

    async def take_free_lease(self, tenant: str, device: str) -> Lease | None:
        """Take the device's lease if it is free and messages are pending (crash recovery)."""
        return (await self.poll(tenant, device, 0)).lease

    async def next_turn(self, lease: Lease) -> Turn | None:
        """The holder's next turn, its attempt counted; None frees the lease (or finds it lost)."""
        for _ in range(NEXT_READS):
            row = await self._row(sql.NEXT, {"tenant": lease.tenant, "device": lease.device, "epoch": lease.epoch})
            turn = _turn(row["batch"], row["history"])
            if turn is not None or row["freed"] or not row["held"]:
                return turn
        return None

    async def renew(self, lease: Lease) -> bool:
        """Slide the lease by lease_seconds; False when it is no longer ours."""
        params = {"tenant": lease.tenant, "device": lease.device, "epoch": lease.epoch}
        return await self._row(sql.RENEW, params) is not None

    async def release(self, lease: Lease) -> bool:
        """Give the lease back now (an interrupted turn); False when it was no longer ours."""
        params = {"tenant": lease.tenant, "device": lease.device, "epoch": lease.epoch}
        return await self._row(sql.RELEASE, params) is not None

    async def finish(
        self, lease: Lease, turn: Turn, outcome: Outcome, *, notify: bool = False, db_ms: int = 0, total_ms: int = 0
    ) -> Finished:
        """Write a turn's reply and effects and start the next turn; LeaseLost when the lease is gone.

        notify: say at commit that the device's turn finished (NOTIFY DONE_CHANNEL), for a waiter
        on another instance (app/streams/signals.py).
        """
        last = turn.last
        metadata = {**outcome.metadata, **last.metadata}
        if outcome.choices:
            metadata["choices"] = list(outcome.choices)
        if outcome.template is not None:
            metadata["template"] = outcome.template
        if len(turn.messages) > 1:
            metadata["merged"] = [message.id for message in turn.messages]
        row = await self._row(
            sql.FINISH,
            {
                "tenant": lease.tenant,
                "device": lease.device,
                "epoch": lease.epoch,
                "ids": [message.id for message in turn.messages],
                "last_id": last.id,
                "reply": outcome.reply,
                "agent": outcome.agent,
                "agent_before": outcome.agent_before,
                "agent_after": outcome.agent_after,
                "ttl": outcome.ttl,
                "patch": json.dumps(outcome.patch),
                "cap": self.context_cap,
                "tools": json.dumps(outcome.tools_used),
                "elapsed_ms": outcome.elapsed_ms,
                "status": outcome.status,
                "has_error": outcome.error is not None,
                "error": outcome.error,
                "metadata": json.dumps(metadata),
                "event": outcome.event,
                "db_ms": db_ms,
                "total_ms": total_ms,
                "notify": notify,
            },
        )
        if row is None:
            raise LeaseLost(f"lease epoch {lease.epoch} on device is no longer held; reply discarded")
        lock_expires = row["expires_at"] if row["active_agent"] else None
        if row["held"]:
            return Finished(held(row["active_agent"], lock_expires), row["context"], None, bool(row["kept"]), True)
        answer = Answer(
            outcome.reply,
            outcome.agent,
            row["active_agent"],
            lock_expires,
            row["reply_id"],
            outcome.choices,
            outcome.template,
            len(turn.messages) > 1,
            stopped=bool(outcome.metadata.get("stopped")),
        )
        answered = {message.id: outcome.agent for message in turn.messages}
        following = _turn(row["next_batch"], row["history"], answered)
        if following is not None and self.history and following.messages[0].session_id == row["session_id"]:
            # This statement's own reply is invisible to its snapshot: it joins the history here.
            reply = HistoryItem(
                "assistant",
                outcome.reply,
                outcome.agent,
                row["reply_created_at"],
                bool(outcome.metadata.get("stopped")),
            )
            following = Turn(following.messages, (*following.history, reply)[-self.history :])
        return Finished(answer, row["context"], following, bool(row["kept"]))

    async def stale_devices(self, limit: int) -> list[tuple[str, str]]:
        """Devices with pending messages and no live lease: a crashed worker's leftovers."""
        rows = await arun(self.engine, sql.STALE_DEVICES, {"limit": limit}, rows="all")
        return [(row["tenant_id"], row["device_id"]) for row in rows]


__all__: Sequence[str] = (
    "Answer",
    "Claim",
    "Finished",
    "Lease",
    "Ledger",
    "Outcome",
    "Pending",
    "Poll",
    "Turn",
    "held",
    "request_hash",
)

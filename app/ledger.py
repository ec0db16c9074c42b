"""The message ledger and the per-device lease: claim, poll and finish, one statement each.

A worker claims a device's lease in a short statement, runs its agents with no
transaction open, and writes everything back in one finish statement that is
fenced by the lease epoch: a worker that outlived its lease cannot write.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from app.core.db import run
from app.errors import LeaseLost
from app.sessions import new_session_id

LIVE_AGENT = "CASE WHEN s.active_agent IS NOT NULL AND s.expires_at > now() THEN s.active_agent END"

OLDEST_PENDING = """
    SELECT id, content, metadata FROM conversation_messages
    WHERE tenant_id = %(tenant)s AND device_id = %(device)s AND status = 'pending'
    ORDER BY id LIMIT 1
"""

# The reply to an inbound message and the device's lock, for duplicates and waiters.
MINE = f"""
    SELECT m.id, m.status, r.content AS reply, r.agent AS reply_agent,
           {LIVE_AGENT.replace("s.", "st.")} AS lock_agent,
           CASE WHEN st.expires_at > now() THEN st.expires_at END AS lock_expires_at
    FROM conversation_messages m
    LEFT JOIN conversation_messages r ON r.reply_to = m.id AND r.role = 'assistant'
    LEFT JOIN conversation_states st ON st.tenant_id = m.tenant_id AND st.device_id = m.device_id
"""

TAKE_LEASE = f"""
    INSERT INTO conversation_states AS s (tenant_id, device_id, session_ttl, lease_epoch, lease_expires_at)
    SELECT %(tenant)s, %(device)s, %(default_ttl)s, 1, now() + make_interval(secs => %(lease)s)
    WHERE {{when}}
    ON CONFLICT (tenant_id, device_id) DO UPDATE SET
        lease_epoch = s.lease_epoch + 1,
        lease_expires_at = EXCLUDED.lease_expires_at,
        lease_token = NULL,
        version = s.version + 1,
        updated_at = now()
    WHERE s.lease_expires_at IS NULL OR s.lease_expires_at <= now()
    RETURNING s.lease_epoch, {LIVE_AGENT} AS lock_agent, s.context
"""

# Record the message (a known external id is a no-op), note the activity (a device
# quiet for longer than its session_ttl starts a new session: fresh context, user
# preferences kept) and take the lease if it is free, in one statement. The lease
# test runs on the latest row version, so two claims never both win; the random
# token tells the winner. The new message is invisible to the rest of this
# statement, so "older" only finds messages that were pending before it.
ROTATE = "(s.session_id IS NULL OR s.last_activity_at <= now() - make_interval(secs => s.session_ttl))"
FREE = "(s.lease_expires_at IS NULL OR s.lease_expires_at <= now())"

CLAIM = f"""
WITH new AS (
    INSERT INTO conversation_messages (tenant_id, device_id, role, content, external_id, status, metadata)
    VALUES (%(tenant)s, %(device)s, 'user', %(content)s, %(external_id)s::text, 'pending', %(metadata)s::jsonb)
    ON CONFLICT (tenant_id, external_id) DO NOTHING
    RETURNING id
), older AS ({OLDEST_PENDING}),
lease AS (
    INSERT INTO conversation_states AS s
        (tenant_id, device_id, session_ttl, lease_epoch, lease_expires_at, lease_token,
         session_id, session_started_at, last_activity_at)
    SELECT %(tenant)s, %(device)s, %(default_ttl)s, 1, now() + make_interval(secs => %(lease)s), %(token)s,
           %(new_session)s, now(), now()
    WHERE EXISTS (SELECT 1 FROM new) OR EXISTS (SELECT 1 FROM older)
    ON CONFLICT (tenant_id, device_id) DO UPDATE SET
        lease_epoch = CASE WHEN {FREE} THEN s.lease_epoch + 1 ELSE s.lease_epoch END,
        lease_expires_at = CASE WHEN {FREE} THEN EXCLUDED.lease_expires_at ELSE s.lease_expires_at END,
        lease_token = CASE WHEN {FREE} THEN EXCLUDED.lease_token ELSE s.lease_token END,
        session_id = CASE WHEN {ROTATE} THEN EXCLUDED.session_id ELSE s.session_id END,
        session_started_at = CASE WHEN {ROTATE} THEN now() ELSE s.session_started_at END,
        context = CASE WHEN {ROTATE}
                       THEN jsonb_build_object('user_preferences', COALESCE(s.context -> 'user_preferences', '{{}}'))
                       ELSE s.context END,
        last_activity_at = CASE WHEN EXISTS (SELECT 1 FROM new) THEN now() ELSE s.last_activity_at END,
        version = s.version + 1,
        updated_at = now()
    RETURNING s.lease_token = %(token)s AS won, s.lease_epoch, {LIVE_AGENT} AS lock_agent, s.context
),
dup AS ({MINE} WHERE m.tenant_id = %(tenant)s AND m.external_id = %(external_id)s::text
        AND NOT EXISTS (SELECT 1 FROM new))
SELECT (SELECT id FROM new) AS new_id,
       CASE WHEN lease.won THEN lease.lease_epoch END AS lease_epoch, lease.lock_agent, lease.context,
       older.id AS older_id,
       dup.id AS dup_id, dup.status AS dup_status, dup.reply AS dup_reply, dup.reply_agent AS dup_agent,
       dup.lock_agent AS dup_lock_agent, dup.lock_expires_at AS dup_lock_expires_at
FROM (SELECT 1) one
LEFT JOIN lease ON true LEFT JOIN older ON true LEFT JOIN dup ON true
"""

# A waiter's poll: is my message answered yet, else take the lease if it came free.
POLL = f"""
WITH older AS ({OLDEST_PENDING}),
lease AS ({TAKE_LEASE.format(when="EXISTS (SELECT 1 FROM older)")}),
mine AS ({MINE} WHERE m.id = %(message_id)s)
SELECT mine.status, mine.reply, mine.reply_agent, mine.lock_agent, mine.lock_expires_at,
       lease.lease_epoch, lease.lock_agent AS lease_lock_agent, lease.context
FROM (SELECT 1) one LEFT JOIN mine ON true LEFT JOIN lease ON true
"""

# Store the reply, apply the lock change (compare-and-set against the lock the
# agents saw) and the context patch (merged in SQL, so concurrent patches keep each
# other's keys), mark the message done, and keep the lease only if more messages
# wait. Nothing happens unless the lease epoch still matches.
LIVE = f"({LIVE_AGENT})"
OK = f"({LIVE} IS NOT DISTINCT FROM %(agent_before)s::text)"

FINISH = f"""
WITH nxt AS (
    SELECT id, content, metadata FROM conversation_messages
    WHERE tenant_id = %(tenant)s AND device_id = %(device)s AND status = 'pending' AND id <> %(message_id)s
    ORDER BY id LIMIT 1
), st AS (
    UPDATE conversation_states s SET
        active_agent = CASE WHEN {OK} THEN %(agent_after)s::text ELSE s.active_agent END,
        locked_at = CASE WHEN NOT {OK} THEN s.locked_at
                         WHEN %(agent_after)s::text IS NULL THEN NULL
                         WHEN %(agent_after)s::text = {LIVE} THEN s.locked_at
                         ELSE now() END,
        session_ttl = CASE WHEN {OK} THEN COALESCE(%(ttl)s::integer, s.session_ttl) ELSE s.session_ttl END,
        expires_at = CASE WHEN NOT {OK} THEN s.expires_at
                          WHEN %(agent_after)s::text IS NULL THEN NULL
                          ELSE now() + make_interval(secs => COALESCE(%(ttl)s::integer, s.session_ttl)) END,
        context = cs_merge_context(s.context, %(patch)s::jsonb, %(cap)s),
        lease_expires_at = CASE WHEN EXISTS (SELECT 1 FROM nxt)
                                THEN now() + make_interval(secs => %(lease)s) END,
        version = s.version + 1,
        updated_at = now()
    WHERE s.tenant_id = %(tenant)s AND s.device_id = %(device)s
      AND s.lease_epoch = %(epoch)s AND s.lease_expires_at > now()
    RETURNING s.active_agent, s.expires_at, s.context, s.session_id
), inbound AS (
    UPDATE conversation_messages m SET status = %(status)s, agent = %(agent)s, session_id = st.session_id,
        processing_time_ms = %(elapsed_ms)s, has_error = %(has_error)s, error_message = %(error)s::text
    FROM st WHERE m.id = %(message_id)s
    RETURNING m.id
), outbound AS (
    INSERT INTO conversation_messages
        (tenant_id, device_id, role, content, agent, reply_to, tools_used, processing_time_ms, metadata, session_id)
    SELECT %(tenant)s, %(device)s, 'assistant', %(reply)s, %(agent)s, %(message_id)s,
           %(tools)s::jsonb, %(elapsed_ms)s, %(metadata)s::jsonb, st.session_id
    FROM st
    RETURNING id
), audit AS (
    INSERT INTO conversation_audit
        (tenant_id, device_id, session_id, event, from_agent, to_agent, message_id, db_ms, agent_ms, total_ms)
    SELECT %(tenant)s, %(device)s, st.session_id, %(event)s::text, %(agent_before)s::text, %(agent_after)s::text,
           %(message_id)s, %(db_ms)s, %(elapsed_ms)s, %(total_ms)s
    FROM st WHERE %(event)s::text IS NOT NULL
)
SELECT st.active_agent, st.expires_at, st.context, outbound.id AS reply_id,
       nxt.id AS next_id, nxt.content AS next_content, nxt.metadata AS next_metadata
FROM st CROSS JOIN outbound LEFT JOIN nxt ON true
"""


# The oldest pending message, read afresh once a lease is won: the claim that won
# it saw older messages in its own snapshot, and a holder that finished just
# before may have answered them since. With none left the lease is freed.
NEXT_PENDING = f"""
WITH nxt AS ({OLDEST_PENDING}),
freed AS (
    UPDATE conversation_states s SET lease_expires_at = NULL, version = s.version + 1
    WHERE s.tenant_id = %(tenant)s AND s.device_id = %(device)s AND s.lease_epoch = %(epoch)s
      AND NOT EXISTS (SELECT 1 FROM nxt)
)
SELECT nxt.id AS next_id, nxt.content AS next_content, nxt.metadata AS next_metadata
FROM (SELECT 1) one LEFT JOIN nxt ON true
"""

# A message answered without the agents (a channel's canned reply): both sides
# stored at once, once per external id, leaving the lock and lease alone.
RECORD_EXCHANGE = """
WITH st AS (
    SELECT session_id FROM conversation_states WHERE tenant_id = %(tenant)s AND device_id = %(device)s
), inbound AS (
    INSERT INTO conversation_messages (tenant_id, device_id, role, content, external_id, status, metadata, session_id)
    SELECT %(tenant)s, %(device)s, 'user', %(content)s, %(external_id)s::text, 'done', %(metadata)s::jsonb,
           (SELECT session_id FROM st)
    ON CONFLICT (tenant_id, external_id) DO NOTHING
    RETURNING id, session_id
)
INSERT INTO conversation_messages (tenant_id, device_id, role, content, reply_to, metadata, session_id)
SELECT %(tenant)s, %(device)s, 'assistant', %(reply)s, inbound.id, %(metadata)s::jsonb, inbound.session_id
FROM inbound
RETURNING reply_to, id
"""


@dataclass(frozen=True)
class Pending:
    """An inbound message waiting to be handled."""

    id: int
    text: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Lease:
    """A device claimed by this worker: the fencing epoch and the session it saw."""

    epoch: int
    lock: str | None
    context: dict[str, Any]
    first: Pending | None  # None: read the oldest pending message afresh (Ledger.next_pending)


@dataclass(frozen=True)
class Answer:
    """A stored reply and the device's lock as it stands after it."""

    reply: str
    agent: str | None
    lock_agent: str | None
    lock_expires_at: datetime | None
    reply_id: int | None = None


@dataclass(frozen=True)
class Claim:
    message_id: int | None  # None: a duplicate external id
    lease: Lease | None  # set when this worker now holds the device
    duplicate: Answer | None  # the first reply, for a duplicate that was already answered
    duplicate_of: int | None = None


@dataclass(frozen=True)
class Poll:
    answer: Answer | None
    lease: Lease | None


@dataclass(frozen=True)
class Finished:
    answer: Answer
    context: dict[str, Any]
    next: Pending | None  # the lease is still ours while this is set


@dataclass(frozen=True)
class Outcome:
    """What the agents decided for one message, ready to be written."""

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

    @property
    def event(self) -> str | None:
        """The audit event this outcome makes of the lock."""
        before, after = self.agent_before, self.agent_after
        if before == after:
            return "refresh" if after else None
        if before is None:
            return "set"
        return "release" if after is None else "handoff"


def _pending(row: Any, prefix: str) -> Pending | None:
    ident = row[f"{prefix}_id"]
    if ident is None:
        return None
    return Pending(ident, row[f"{prefix}_content"], row[f"{prefix}_metadata"] or {})


class Ledger:
    """SQL for the pipeline; every method is one round trip."""

    def __init__(self, engine: Engine, *, lease_seconds: int, default_ttl: int, context_cap: int):
        self.engine = engine
        self.lease_seconds = lease_seconds
        self.default_ttl = default_ttl
        self.context_cap = context_cap

    def _row(self, sql: str, params: dict[str, Any]) -> Any:
        params |= {"lease": self.lease_seconds, "default_ttl": self.default_ttl}
        return run(self.engine, sql, params)

    def claim(
        self, tenant: str, device: str, text: str, *, external_id: str | None, metadata: dict[str, Any]
    ) -> Claim:
        row = self._row(
            CLAIM,
            {
                "token": uuid.uuid4().hex,
                "new_session": new_session_id(),
                "tenant": tenant,
                "device": device,
                "content": text,
                "external_id": external_id,
                "metadata": json.dumps(metadata),
            },
        )
        new_id = row["new_id"]
        lease = None
        if row["lease_epoch"] is not None:
            # Our own new message cannot have been answered by anyone; older ones may have.
            first = Pending(new_id, text, metadata) if row["older_id"] is None else None
            lease = Lease(row["lease_epoch"], row["lock_agent"], row["context"], first)
        duplicate = None
        if new_id is None and row["dup_status"] == "done":
            duplicate = Answer(row["dup_reply"], row["dup_agent"], row["dup_lock_agent"], row["dup_lock_expires_at"])
        return Claim(new_id, lease, duplicate, row["dup_id"])

    def poll(self, tenant: str, device: str, message_id: int) -> Poll:
        row = self._row(POLL, {"tenant": tenant, "device": device, "message_id": message_id})
        answer = None
        if row["status"] == "done":
            answer = Answer(row["reply"], row["reply_agent"], row["lock_agent"], row["lock_expires_at"])
        lease = None
        if row["lease_epoch"] is not None:
            lease = Lease(row["lease_epoch"], row["lease_lock_agent"], row["context"], None)
        return Poll(answer, lease)

    def next_pending(self, tenant: str, device: str, epoch: int) -> Pending | None:
        """The device's oldest pending message for the lease holder; frees the lease when there is none."""
        return _pending(self._row(NEXT_PENDING, {"tenant": tenant, "device": device, "epoch": epoch}), "next")

    def finish(
        self, tenant: str, device: str, epoch: int, message: Pending, outcome: Outcome, *, db_ms: int = 0,
        total_ms: int = 0,
    ) -> Finished:
        row = self._row(
            FINISH,
            {
                "tenant": tenant,
                "device": device,
                "epoch": epoch,
                "message_id": message.id,
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
                "metadata": json.dumps(message.metadata),
                "event": outcome.event,
                "db_ms": db_ms,
                "total_ms": total_ms,
            },
        )
        if row is None:
            raise LeaseLost(f"lease epoch {epoch} on device is no longer held; reply discarded")
        lock_expires = row["expires_at"] if row["active_agent"] else None
        answer = Answer(outcome.reply, outcome.agent, row["active_agent"], lock_expires, row["reply_id"])
        return Finished(answer, row["context"], _pending(row, "next"))

    def record_exchange(
        self, tenant: str, device: str, content: str, reply: str, *, external_id: str, metadata: dict[str, Any]
    ) -> tuple[int, int] | None:
        """Store a message and its canned reply; (inbound id, reply id), or None for a known external id."""
        params = {
            "tenant": tenant, "device": device, "content": content, "reply": reply,
            "external_id": external_id, "metadata": json.dumps(metadata),
        }
        row = run(self.engine, RECORD_EXCHANGE, params)
        return None if row is None else (row["reply_to"], row["id"])

    def record_delivery(self, reply_id: int, error: str | None) -> None:
        """Note on an outbound message whether the channel accepted it."""
        run(
            self.engine,
            "UPDATE conversation_messages SET has_error = %(failed)s, error_message = %(error)s::text, "
            "metadata = metadata || jsonb_build_object('delivered', NOT %(failed)s) WHERE id = %(id)s",
            {"id": reply_id, "failed": error is not None, "error": error},
        )

    def stale_devices(self, limit: int) -> list[tuple[str, str]]:
        """Devices with pending messages and no live lease: a crashed worker's leftovers."""
        rows = run(
            self.engine,
            "SELECT DISTINCT m.tenant_id, m.device_id FROM conversation_messages m "
            "JOIN conversation_states s USING (tenant_id, device_id) "
            "WHERE m.status = 'pending' AND (s.lease_expires_at IS NULL OR s.lease_expires_at <= now()) "
            "LIMIT %(limit)s",
            {"limit": limit},
            rows="all",
        )
        return [(row["tenant_id"], row["device_id"]) for row in rows]

"""Operator takeover: a person holds a device's lock as `human`, answers, and hands back to the bot.

| statement | guarantee |
| --- | --- |
| TAKEOVER | the lock becomes `human` (operator, TTL) whatever held it, with a `takeover` audit row naming the agent it took over from, and the device's pending messages are marked `held`, all in one statement on the locked row; a streamed turn in flight is asked to stop (its reply would be dropped); the live agent lock it displaces is kept in `resume_lock` (agent, locked_at, seconds it had left; a takeover of a takeover keeps the first one's) |
| RELEASE | only a live `human` lock is released (`release` audit row naming the lock's new holder, in the same statement); the lock becomes the one the takeover displaced (its agent, locked_at, and the seconds it had left from now; the context is not touched), or the agent the operator chose (for its session_ttl), or none; held messages an operator reply came after are `done`; with answer_held the others become pending again, in their order, for the pipeline to answer, and a stop the takeover asked for them is withdrawn |
| REPLY | stored only under a live `human` lock, which it slides by the takeover's TTL; linked to the latest held message; a free-form WhatsApp text outside the 24-hour customer-service window stores nothing |

While the `human` lock is live the pipeline stores the device's messages as `held`
and runs no agent (app/ledger/statements.py). When it expires the manager answers the
next message; held messages stay unanswered unless a release
asks for them. Every statement is filtered by the caller's tenant. Statements run with
app.core.db.arun and sends on the async Graph API client: nothing here holds a thread.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from app import validation
from app.agents import HUMAN
from app.channels.whatsapp import WhatsAppSender, replier
from app.core.db import arun
from app.core.engine import Engine
from app.devices import canonical_device_id
from app.pipeline import OnReply, Pipeline
from app.sql import human_lock, live_agent, message_stored
from app.streams.statements import STOP_CHANNEL

logger = logging.getLogger(__name__)

KEY = "s.tenant_id = %(tenant)s AND s.device_id = %(device)s"
DEVICE = "m.tenant_id = %(tenant)s AND m.device_id = %(device)s"
DEFAULT_TTL = 3600
# The WhatsApp customer-service window (Meta, "Customer service windows"): free-form
# messages only within 24 hours of the user's last message; templates at any time.
WINDOW = "interval '24 hours'"
ADDRESS_KEYS = ("channel", "phone_number_id", "to", "recipient", "wa_message_id")

# FOR UPDATE: "old" is the row as it stands when we hold it, so the audit names the
# agent really displaced, and no claim stores a pending message in between.
TAKEOVER = f"""
WITH old AS (
    SELECT s.tenant_id, s.device_id, {live_agent("s")} AS agent FROM conversation_states s WHERE {KEY}
    FOR UPDATE
), changed AS (
    UPDATE conversation_states s SET
        active_agent = '{HUMAN}',
        locked_at = CASE WHEN old.agent = '{HUMAN}' THEN s.locked_at ELSE now() END,
        expires_at = now() + make_interval(secs => %(ttl)s),
        operator = %(operator)s, operator_ttl = %(ttl)s,
        resume_lock = CASE
            WHEN old.agent = '{HUMAN}' THEN s.resume_lock
            WHEN old.agent IS NOT NULL THEN jsonb_build_object(
                'agent', old.agent, 'locked_at', s.locked_at,
                'remaining_seconds', GREATEST(1, ceil(extract(epoch FROM s.expires_at - now())))::integer)
        END,
        version = s.version + 1, updated_at = now()
    FROM old WHERE s.tenant_id = old.tenant_id AND s.device_id = old.device_id
    RETURNING s.session_id, s.active_agent, s.locked_at, s.expires_at, s.operator, s.version,
              old.agent AS previous_agent
), parked AS (
    UPDATE conversation_messages m SET status = 'held'
    FROM changed WHERE {DEVICE} AND m.status = 'pending'
    RETURNING m.id
), audit AS (
    INSERT INTO conversation_audit (tenant_id, device_id, session_id, event, from_agent, to_agent)
    SELECT %(tenant)s, %(device)s, session_id, 'takeover', previous_agent, active_agent FROM changed
), in_flight AS (
    -- The message of the turn running now, read in the statement's snapshot (before parked): messages
    -- are answered in id order, and a started turn has counted its attempt.
    SELECT min(m.id) AS id FROM conversation_messages m WHERE {DEVICE} AND m.status = 'pending' AND m.attempts > 0
), stopped AS (
    -- That turn is asked to stop, as POST /api/chat/stop asks (app/streams/statements.py: stop): its
    -- finish drops its reply for the person anyway, so it streams no more text under their lock.
    INSERT INTO conversation_drafts AS d (tenant_id, device_id, epoch, attempt, message_ids, stop_message_id)
    SELECT %(tenant)s, %(device)s, COALESCE((SELECT s.lease_epoch FROM conversation_states s WHERE {KEY}), 0), 0,
           '{{}}', in_flight.id
    FROM in_flight, changed WHERE in_flight.id IS NOT NULL
    ON CONFLICT (tenant_id, device_id) DO UPDATE SET stop_message_id = EXCLUDED.stop_message_id, updated_at = now()
    RETURNING 1
)
SELECT changed.*, (SELECT count(*) FROM parked) AS held,
       -- delivered at commit to every Listener: the turn's worker, on whichever instance, stops at once
       CASE WHEN EXISTS (SELECT 1 FROM stopped)
            THEN pg_notify('{STOP_CHANNEL}', json_build_array(%(tenant)s::text, %(device)s::text)::text) END AS notified
FROM changed
"""

# %(resume)s: the lock becomes resume_lock; otherwise %(agent)s (NULL: no lock) for the session_ttl.
# A held message is answered by an operator reply stored after it (a larger id).
RELEASE = f"""
WITH old AS (
    SELECT s.tenant_id, s.device_id, s.session_id, s.version, s.resume_lock, s.session_ttl,
           {human_lock("s")} AS taken,
           CASE WHEN %(resume)s THEN s.resume_lock ->> 'agent' ELSE %(agent)s::text END AS agent
    FROM conversation_states s WHERE {KEY}
    FOR UPDATE
), changed AS (
    UPDATE conversation_states s SET
        active_agent = old.agent,
        locked_at = CASE WHEN old.agent IS NULL THEN NULL
                         WHEN %(resume)s THEN (old.resume_lock ->> 'locked_at')::timestamptz ELSE now() END,
        expires_at = CASE WHEN old.agent IS NULL THEN NULL
                          WHEN %(resume)s THEN now() + make_interval(secs => (old.resume_lock ->> 'remaining_seconds')::integer)
                          ELSE now() + make_interval(secs => old.session_ttl) END,
        resume_lock = NULL, operator = NULL, operator_ttl = NULL, version = s.version + 1, updated_at = now()
    FROM old WHERE s.tenant_id = old.tenant_id AND s.device_id = old.device_id AND old.taken
    RETURNING s.version, s.active_agent, s.expires_at
), held AS (
    SELECT m.id, EXISTS (
        SELECT 1 FROM conversation_messages r
        WHERE r.tenant_id = m.tenant_id AND r.device_id = m.device_id AND r.role = 'assistant'
          AND r.agent = '{HUMAN}' AND r.id > m.id) AS answered
    FROM conversation_messages m, changed WHERE {DEVICE} AND m.status = 'held'
), settled AS (
    UPDATE conversation_messages m SET status = CASE WHEN held.answered THEN 'done' ELSE 'pending' END, attempts = 0
    FROM held WHERE m.id = held.id AND (held.answered OR %(answer_held)s)
    RETURNING held.answered
), unstopped AS (
    -- A stop the takeover asked for a turn on a held message (TAKEOVER: stopped) is not for the turn
    -- that answers it now: kept, it would stop that one at its first write.
    UPDATE conversation_drafts d SET stop_message_id = NULL
    FROM changed WHERE d.tenant_id = %(tenant)s AND d.device_id = %(device)s
      AND d.stop_message_id IN (SELECT id FROM held)
), audit AS (
    INSERT INTO conversation_audit (tenant_id, device_id, session_id, event, from_agent, to_agent)
    SELECT tenant_id, device_id, session_id, 'release', '{HUMAN}', agent FROM old WHERE taken
)
SELECT old.taken, COALESCE((SELECT version FROM changed), old.version) AS version,
       (SELECT active_agent FROM changed) AS agent, (SELECT expires_at FROM changed) AS expires_at,
       (SELECT count(*) FROM settled WHERE NOT answered) AS resumed
FROM old
"""

# The device's channel comes from its latest inbound message; the address keys are copied for the
# record only (the outbox sends from the tenant's own number to the device, app/channels/whatsapp/outbox.py).
REPLY = f"""
WITH st AS (
    SELECT s.session_id, s.operator, s.operator_ttl, {human_lock("s")} AS taken
    FROM conversation_states s WHERE {KEY}
    FOR UPDATE
), last AS (
    SELECT m.metadata, COALESCE(m.sent_at, m.created_at) > now() - {WINDOW} AS open
    FROM conversation_messages m WHERE {DEVICE} AND m.role = 'user' ORDER BY m.id DESC LIMIT 1
), gate AS (
    SELECT st.*, COALESCE((SELECT metadata ->> 'channel' FROM last), 'web') AS channel,
           COALESCE((SELECT metadata FROM last), '{{}}'::jsonb) AS address,
           COALESCE((SELECT open FROM last), false) AS open
    FROM st
), ok AS (
    SELECT * FROM gate
    WHERE taken AND CASE WHEN channel = 'whatsapp' THEN open OR %(template)s::jsonb IS NOT NULL
                         ELSE %(template)s::jsonb IS NULL END
), slid AS (
    UPDATE conversation_states s SET expires_at = now() + make_interval(secs => COALESCE(s.operator_ttl, {DEFAULT_TTL})),
        last_message_at = {message_stored("s")}, version = s.version + 1, updated_at = now()
    FROM ok WHERE {KEY}
    RETURNING s.expires_at
), inserted AS (
    INSERT INTO conversation_messages (tenant_id, device_id, role, content, agent, reply_to, metadata, session_id)
    SELECT %(tenant)s, %(device)s, 'assistant', %(content)s, '{HUMAN}',
           (SELECT max(m.id) FROM conversation_messages m WHERE {DEVICE} AND m.status = 'held'),
           (SELECT COALESCE(jsonb_object_agg(key, value), '{{}}') FROM jsonb_each(ok.address)
            WHERE key = ANY(%(address_keys)s))
           || jsonb_build_object('channel', ok.channel, 'operator', ok.operator)
           || CASE WHEN %(template)s::jsonb IS NULL THEN '{{}}'::jsonb
                   ELSE jsonb_build_object('template', %(template)s::jsonb) END,
           ok.session_id
    FROM ok
    RETURNING id, role, content, agent, created_at, session_id, reply_to, metadata
)
SELECT gate.taken, gate.channel, gate.open, (SELECT expires_at FROM slid) AS lock_expires_at, inserted.*
FROM gate LEFT JOIN inserted ON true
"""


@dataclass(frozen=True)
class Reply:
    """What became of an operator's reply: stored (message) or refused (why)."""

    message: dict[str, Any] | None
    refused: str | None = None  # "no_state", "not_taken_over", "outside_window", "template_needs_whatsapp"
    channel: str = "web"
    lock_expires_at: Any = None


class TakeoverStore:
    """The takeover's statements; every method takes the caller's tenant first."""

    def __init__(self, engine: Engine):
        self.engine = engine

    async def _first(self, sql: str, params: dict[str, Any]) -> dict[str, Any] | None:
        row = await arun(self.engine, sql, params)
        return None if row is None else dict(row)

    @staticmethod
    def _key(tenant: str, device: str) -> dict[str, Any]:
        return {"tenant": validation.tenant_id(tenant), "device": canonical_device_id(device)}

    async def take_over(self, tenant: str, device: str, operator: str, ttl: int = DEFAULT_TTL) -> dict[str, Any] | None:
        """Give the lock to `human` for operator (ttl seconds), audited; None if the device has no state."""
        params = self._key(tenant, device) | {"operator": operator, "ttl": validation.ttl(ttl)}
        row = await self._first(TAKEOVER, params)
        if row is not None:
            logger.info(
                "operator took a conversation over from %s (%s messages held)", row["previous_agent"], row["held"]
            )
        return row

    async def release(
        self, tenant: str, device: str, *, answer_held: bool = False, resume: bool = True, agent: str | None = None
    ) -> dict[str, Any] | None:
        """Release a live `human` lock, audited; None if no state. taken False: there was none to release.

        resume: the lock goes back to the agent the takeover displaced (none if none did);
        otherwise to agent (None: no lock). Returns {taken, version, agent, expires_at, resumed}.
        """
        params = {
            "answer_held": answer_held,
            "resume": resume,
            "agent": None if resume or agent is None else validation.agent_key(agent),
        }
        row = await self._first(RELEASE, self._key(tenant, device) | params)
        if row is not None and row["taken"]:
            logger.info(
                "operator released a conversation to %s (%s held messages to answer)", row["agent"], row["resumed"]
            )
        return row

    async def reply(self, tenant: str, device: str, text: str, *, template: dict[str, Any] | None = None) -> Reply:
        """Store the operator's reply under a live `human` lock (sliding it); refused replies store nothing."""
        params = self._key(tenant, device) | {
            "content": validation.message_text(text),
            "address_keys": list(ADDRESS_KEYS),
            "template": None if template is None else json.dumps(template),
        }
        row = await self._first(REPLY, params)
        if row is None:
            return Reply(None, "no_state")
        if not row["taken"]:
            return Reply(None, "not_taken_over", row["channel"])
        if row["id"] is None:
            why = "template_needs_whatsapp" if row["channel"] != "whatsapp" else "outside_window"
            return Reply(None, why, row["channel"])
        message = {key: row[key] for key in ("id", "role", "content", "agent", "created_at", "session_id", "reply_to")}
        message["operator"] = (row["metadata"] or {}).get("operator")
        return Reply(message, None, row["channel"], row["lock_expires_at"])


class OperatorChannel:
    """Sends an operator's stored reply through the device's channel, and answers held messages on release."""

    def __init__(self, engine: Engine, sender: WhatsAppSender):
        self.engine = engine
        self.sender = sender

    def on_reply(self, pipeline: Pipeline) -> OnReply:
        """The pipeline's on_reply for the bot's answers to held messages (WhatsApp sends them)."""
        return replier(self.sender, pipeline.ledger)

    async def deliver(self, message_id: int) -> str:
        """Send a stored operator reply to its WhatsApp user, after any earlier unsent reply of the device.

        The WhatsApp outbox does what send_to_device does once it has stored a message: it
        honours the customer-service window and records the outcome on the row. Returns
        "sent", "retry" (stored, not accepted yet: the cleanup run sends it), "failed" or
        "outside_window".
        """
        outbox = self.sender.outbox(self.engine)
        bound = time.monotonic() + outbox.hold
        for delivered in await outbox.flush(reply_id=message_id, deadline=lambda: bound):
            if delivered.reply_id == message_id:
                return delivered.status
        return "retry"  # queued behind an earlier reply that was not accepted yet

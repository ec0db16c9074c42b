"""SQL of a web chat device's own data: its messages page by page, its sessions, and their erasure.

statement        -> guarantee
DEVICE_MESSAGES  -> one session of the device only (default: the current one, with its messages still
                    waiting for an answer); found is false for a session the device does not have
HISTORY (admin)  -> the device's sessions, newest first (the admin API's statement, reused)
DELETE_SESSION   -> the messages of one session of the device, in one statement; of the state row only the
                    inbox's time (last_message_at: the newest message left) and updated_at change; found
                    is false for a session the device does not have; keyed hashes of its channel message
                    ids stay for the replay window (app/erasure.py)
DEVICE_NOW       -> one row, one statement, by primary keys: the device's newest message id (any session, with
                    messages still waiting) and its live lock; what the chat page's event stream compares
ERASE (admin)    -> state, messages (with their deduplication ids) and audit of the device, all or nothing;
                    as DELETE_SESSION, the keyed hashes of its channel message ids stay

Every statement is filtered by tenant and device, so a device never reads or changes
another device's rows, and another device's session looks exactly like a missing one.
"""

from __future__ import annotations

import logging
from typing import Any

from app import validation
from app.admin.statements import ERASE, HISTORY, KEY
from app.core.db import arun, run
from app.core.engine import Engine
from app.core.times import utc_text
from app.erasure import NO_GUARD, ReplayGuard, keep_erased
from app.sql import live_agent, live_until

logger = logging.getLogger(__name__)

DEVICE = "m.tenant_id = %(tenant)s AND m.device_id = %(device)s"

# A message still waiting for its answer has no session id yet: it belongs to the
# current session (as in the admin API's CURRENT_COUNT).
DEVICE_MESSAGES = f"""
WITH cur AS (
    SELECT s.session_id FROM conversation_states s WHERE {KEY}
), sel AS (
    SELECT COALESCE(%(session)s::text, (SELECT session_id FROM cur)) AS session_id,
           COALESCE(%(session)s::text IS NULL OR %(session)s::text = (SELECT session_id FROM cur), false) AS current
), f AS (
    SELECT sel.session_id, sel.current,
           sel.current OR EXISTS (
               SELECT 1 FROM conversation_messages m WHERE {DEVICE} AND m.session_id = sel.session_id
           ) AS found
    FROM sel
)
SELECT f.found, p.* FROM f
LEFT JOIN LATERAL (
    SELECT m.id, m.role, m.content, m.agent, m.created_at, m.sent_at, m.reply_to,
           COALESCE((m.metadata->>'stopped')::boolean, false) AS stopped
    FROM conversation_messages m
    WHERE {DEVICE}
      AND (m.session_id = f.session_id OR (f.current AND m.session_id IS NULL AND m.status = 'pending'))
      AND (%(before)s::bigint IS NULL OR m.id < %(before)s::bigint)
    ORDER BY m.id DESC
    LIMIT %(limit)s
) p ON f.found
ORDER BY p.id DESC
"""

DEVICE_NOW = f"""
SELECT (SELECT max(m.id) FROM conversation_messages m WHERE {DEVICE}) AS newest,
       l.agent, l.expires_at
FROM (SELECT 1) one
LEFT JOIN (SELECT {live_agent("s")} AS agent, {live_until("s")} AS expires_at
           FROM conversation_states s WHERE {KEY}) l ON true
"""

# Messages still waiting for their answer (no session id yet) are left to be answered.
DELETE_SESSION = f"""
WITH cur AS (
    SELECT 1 FROM conversation_states s WHERE {KEY} AND s.session_id = %(session)s
), gone AS (
    DELETE FROM conversation_messages m WHERE {DEVICE} AND m.session_id = %(session)s
    RETURNING m.external_id, m.created_at, m.sent_at
), kept AS ({keep_erased("gone")}
), moved AS (
    -- the inbox's time (app/admin/inbox.py) goes back to the newest message left, or the last activity
    UPDATE conversation_states s SET last_message_at = GREATEST(s.last_activity_at, (
        SELECT max(m.created_at) FROM conversation_messages m
        WHERE {DEVICE} AND m.session_id IS DISTINCT FROM %(session)s)), updated_at = now()
    WHERE {KEY} AND EXISTS (SELECT 1 FROM gone)
)
SELECT EXISTS (SELECT 1 FROM cur) OR EXISTS (SELECT 1 FROM gone) AS found, (SELECT count(*) FROM gone) AS messages
"""


class ChatHistory:
    """A device's own messages and sessions; every method takes the tenant and device first."""

    def __init__(self, engine: Engine, guard: ReplayGuard = NO_GUARD):
        self.engine = engine
        self.guard = guard  # NO_GUARD: an erasure keeps no hashes of its channel message ids

    def _rows(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return run(self.engine, sql, params, rows="all")

    @staticmethod
    def _key(tenant: str, device: str) -> dict[str, Any]:
        return {"tenant": validation.tenant_id(tenant), "device": validation.device_id(device)}

    def messages(
        self, tenant: str, device: str, *, limit: int, before: int | None = None, session_id: str | None = None
    ) -> list[dict[str, Any]] | None:
        """Up to limit messages of one session with id < before, newest first; None if no such session.

        session_id None: the current session (empty for a device with no data yet).
        """
        params = self._key(tenant, device) | {"limit": limit, "before": before, "session": session_id}
        rows = self._rows(DEVICE_MESSAGES, params)
        if not rows or not rows[0]["found"]:
            return None
        return [row for row in rows if row["id"] is not None]

    async def now(self, tenant: str, device: str) -> dict[str, Any]:
        """{"newest": the device's newest message id or None, "lock": {"agent", "expires_at" (ISO 8601)}},
        the lock's fields None when no live lock is held. StoreUnavailable / StoreError as arun."""
        row = await arun(self.engine, DEVICE_NOW, self._key(tenant, device), read_only=True)
        expires_at = utc_text(row["expires_at"]) if row["expires_at"] else None
        return {"newest": row["newest"], "lock": {"agent": row["agent"], "expires_at": expires_at}}

    def sessions(self, tenant: str, device: str) -> list[dict[str, Any]]:
        """The device's sessions, newest first (empty for a device with no data)."""
        rows = self._rows(HISTORY, self._key(tenant, device))
        return [row for row in rows if row["known"] and row["status"] is not None]

    def delete_session(self, tenant: str, device: str, session_id: str) -> bool:
        """Delete the messages of one of the device's sessions; False if it has no such session."""
        params = self._key(tenant, device) | {"session": session_id} | self.guard.params()
        row = self._rows(DELETE_SESSION, params)[0]
        if row["found"]:
            logger.info("a device deleted one of its sessions: %s messages", row["messages"])
        return bool(row["found"])

    def erase(self, tenant: str, device: str) -> None:
        """Delete everything stored for the device (state, messages, deduplication ids, audit).

        Keyed hashes of its channel message ids stay for the replay window (app/erasure.py).
        """
        row = self._rows(ERASE, self._key(tenant, device) | self.guard.params())[0]
        logger.info("a device erased its history: %s state, %s messages, %s audit rows", *row.values())

"""SessionService: the active-agent lock of each device, kept in PostgreSQL.

Every method is one SQL statement (one round trip). Expiry is judged by the
database clock inside that statement, so instances with skewed clocks agree and
an expired lock is never returned, whether or not cleanup has run.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from app import validation
from app.context import ContextPatch, normalized
from app.core.db import run, run_batches
from app.errors import InvalidInput
from app.sql import fresh_context, live

logger = logging.getLogger(__name__)

LIVE = live("s")
KEY = "s.tenant_id = %(tenant)s AND s.device_id = %(device)s"

GET_LOCK = f"SELECT s.active_agent FROM conversation_states s WHERE {KEY} AND {LIVE}"

# A new row starts at version 0; every later change adds 1. Re-setting the agent
# that already holds a live lock keeps its locked_at (the lock continues).
SET_LOCK = """
INSERT INTO conversation_states AS s
    (tenant_id, device_id, active_agent, locked_at, session_ttl, expires_at)
VALUES (%(tenant)s, %(device)s, %(agent)s, now(), %(new_ttl)s, now() + make_interval(secs => %(new_ttl)s))
ON CONFLICT (tenant_id, device_id) DO UPDATE SET
    active_agent = EXCLUDED.active_agent,
    locked_at = CASE WHEN s.active_agent = EXCLUDED.active_agent AND s.expires_at > now()
                     THEN s.locked_at ELSE now() END,
    session_ttl = COALESCE(%(ttl)s, s.session_ttl),
    expires_at = now() + make_interval(secs => COALESCE(%(ttl)s, s.session_ttl)),
    version = s.version + 1,
    updated_at = now()
RETURNING s.version
"""

CLEAR_LOCK = f"""
UPDATE conversation_states s
SET active_agent = NULL, locked_at = NULL, expires_at = NULL, version = s.version + 1, updated_at = now()
WHERE {KEY} AND {LIVE}
RETURNING s.version
"""

TOUCH_LOCK = f"""
UPDATE conversation_states s
SET expires_at = now() + make_interval(secs => s.session_ttl), version = s.version + 1, updated_at = now()
WHERE {KEY} AND {LIVE}
RETURNING s.version
"""

HANDOFF_FROM = f"""
UPDATE conversation_states s
SET active_agent = %(to_agent)s, locked_at = now(),
    session_ttl = COALESCE(%(ttl)s, s.session_ttl),
    expires_at = now() + make_interval(secs => COALESCE(%(ttl)s, s.session_ttl)),
    version = s.version + 1, updated_at = now()
WHERE {KEY} AND {LIVE} AND s.active_agent = %(from_agent)s
RETURNING s.version
"""

# from_agent None: take the lock only where no live lock exists (an expired one
# does not count), as one conditional upsert.
HANDOFF_FREE = f"""
INSERT INTO conversation_states AS s
    (tenant_id, device_id, active_agent, locked_at, session_ttl, expires_at)
VALUES (%(tenant)s, %(device)s, %(to_agent)s, now(), %(new_ttl)s, now() + make_interval(secs => %(new_ttl)s))
ON CONFLICT (tenant_id, device_id) DO UPDATE SET
    active_agent = EXCLUDED.active_agent,
    locked_at = now(),
    session_ttl = COALESCE(%(ttl)s, s.session_ttl),
    expires_at = now() + make_interval(secs => COALESCE(%(ttl)s, s.session_ttl)),
    version = s.version + 1,
    updated_at = now()
WHERE NOT ({LIVE})
RETURNING s.version
"""

# One bounded batch: SKIP LOCKED leaves rows that live traffic is writing to the
# next run, so cleanup never waits on (or blocks) a request.
# Housekeeping is not activity: updated_at stays, so idle rows still age towards retention.
RELEASE_EXPIRED = """
WITH batch AS (
    SELECT ctid, tenant_id, device_id, session_id, active_agent FROM conversation_states
    WHERE active_agent IS NOT NULL AND expires_at <= now()
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), released AS (
    -- By ctid: the rows are locked, so they cannot move; a join on the key would
    -- make the planner hash the whole table for large batches.
    UPDATE conversation_states s
    SET active_agent = NULL, locked_at = NULL, expires_at = NULL, version = s.version + 1
    FROM batch
    WHERE s.ctid = batch.ctid
    RETURNING 1
), audit AS (
    INSERT INTO conversation_audit (tenant_id, device_id, session_id, event, from_agent)
    SELECT tenant_id, device_id, session_id, 'expired', active_agent FROM batch
)
SELECT count(*) FROM released
"""

GET_CONTEXT = f"SELECT s.context FROM conversation_states s WHERE {KEY}"

UPDATE_CONTEXT = """
INSERT INTO conversation_states AS s (tenant_id, device_id, session_ttl, context)
VALUES (%(tenant)s, %(device)s, %(default_ttl)s, cs_merge_context('{}'::jsonb, %(patch)s::jsonb, %(cap)s))
ON CONFLICT (tenant_id, device_id) DO UPDATE SET
    context = cs_merge_context(s.context, %(patch)s::jsonb, %(cap)s),
    version = s.version + 1,
    updated_at = now()
RETURNING s.context
"""

# A new conversation: new session id, the lock released, the context fresh but for
# the user's preferences.
NEW_SESSION = f"""
INSERT INTO conversation_states AS s (tenant_id, device_id, session_ttl, session_id, session_started_at)
VALUES (%(tenant)s, %(device)s, %(default_ttl)s, %(session)s, now())
ON CONFLICT (tenant_id, device_id) DO UPDATE SET
    session_id = EXCLUDED.session_id,
    session_started_at = now(),
    last_activity_at = now(),
    active_agent = NULL, locked_at = NULL, expires_at = NULL,
    context = {fresh_context("s")},
    version = s.version + 1,
    updated_at = now()
RETURNING s.session_id
"""


def new_session_id() -> str:
    """A sortable, human-readable session id: sess_YYYYMMDD_HHMMSS_<6 hex>, UTC."""
    return f"sess_{datetime.now(UTC):%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"


class SessionService:
    """Gets, sets, hands off and releases the active-agent lock of a device."""

    def __init__(self, engine: Engine, *, default_ttl: int = 86400, context_cap: int = 20):
        self.engine = engine
        self.default_ttl = validation.ttl(default_ttl)
        self.context_cap = context_cap

    def _one(self, sql: str, params: dict[str, Any], *, read_only: bool = False) -> Any:
        return run(self.engine, sql, params, rows="scalar", read_only=read_only)

    def _key(self, device_id: str, tenant_id: str) -> dict[str, Any]:
        return {"device": validation.device_id(device_id), "tenant": validation.tenant_id(tenant_id)}

    def get_session_lock(self, device_id: str, *, tenant_id: str = "default") -> str | None:
        """The agent holding a live lock on the device, or None."""
        return self._one(GET_LOCK, self._key(device_id, tenant_id), read_only=True)

    def set_session_lock(
        self, device_id: str, agent_key: str, *, ttl: int | None = None, tenant_id: str = "default"
    ) -> bool:
        """Give the device's lock to agent_key for ttl seconds (which becomes the row's session_ttl)."""
        params = self._key(device_id, tenant_id)
        ttl = validation.ttl(ttl)
        params.update(agent=validation.agent_key(agent_key), ttl=ttl, new_ttl=ttl or self.default_ttl)
        return self._one(SET_LOCK, params) is not None

    def clear_session_lock(self, device_id: str, *, tenant_id: str = "default") -> bool:
        """Release the device's lock; True if a live lock was held."""
        return self._one(CLEAR_LOCK, self._key(device_id, tenant_id)) is not None

    def touch_session_lock(self, device_id: str, *, tenant_id: str = "default") -> bool:
        """Push a live lock's expiry to now + session_ttl; False if there is no live lock."""
        return self._one(TOUCH_LOCK, self._key(device_id, tenant_id)) is not None

    def handoff_session_lock(
        self,
        device_id: str,
        from_agent: str | None,
        to_agent: str,
        *,
        ttl: int | None = None,
        tenant_id: str = "default",
    ) -> bool:
        """Compare-and-set: move the lock from from_agent (None: from nobody) to to_agent."""
        params = self._key(device_id, tenant_id)
        ttl = validation.ttl(ttl)
        params.update(to_agent=validation.agent_key(to_agent), ttl=ttl, new_ttl=ttl or self.default_ttl)
        if from_agent is None:
            return self._one(HANDOFF_FREE, params) is not None
        params["from_agent"] = validation.agent_key(from_agent)
        return self._one(HANDOFF_FROM, params) is not None

    def cleanup_expired_sessions(self, *, batch_size: int = 5000, max_seconds: float | None = None) -> int:
        """Release expired locks in batches of batch_size; returns how many were released."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput("batch_size must be a positive integer")
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        released = run_batches(self.engine, RELEASE_EXPIRED, {}, batch_size=batch_size, deadline=deadline)
        if released:
            logger.info("released %s expired locks", released)
        return released

    def get_session_context(self, device_id: str, *, tenant_id: str = "default") -> dict[str, Any]:
        """The device's session context, with all four parts (empty for an unknown device)."""
        return normalized(self._one(GET_CONTEXT, self._key(device_id, tenant_id), read_only=True))

    def update_session_context(
        self, device_id: str, patch: ContextPatch | dict[str, Any], *, tenant_id: str = "default"
    ) -> dict[str, Any]:
        """Merge a patch into the context in SQL (concurrent patches keep each other's keys)."""
        params = self._key(device_id, tenant_id)
        patch_json = json.dumps(ContextPatch.parse(patch).as_json())
        params.update(patch=patch_json, cap=self.context_cap, default_ttl=self.default_ttl)
        return normalized(self._one(UPDATE_CONTEXT, params))

    def start_new_session(self, device_id: str, *, tenant_id: str = "default") -> str:
        """Start a new conversation for the device and return its session id."""
        params = self._key(device_id, tenant_id)
        params.update(session=new_session_id(), default_ttl=self.default_ttl)
        return self._one(NEW_SESSION, params)

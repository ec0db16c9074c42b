"""SessionService: the active-agent lock of each device, kept in PostgreSQL.

Every method is one SQL statement (one round trip). Expiry is judged by the
database clock inside that statement, so instances with skewed clocks agree and
an expired lock is never returned, whether or not cleanup has run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.engine import Engine

from app import validation
from app.core.db import store_errors
from app.errors import InvalidInput

logger = logging.getLogger(__name__)

LIVE = "s.active_agent IS NOT NULL AND s.expires_at > now()"
KEY = "s.tenant_id = %(tenant)s AND s.device_id = %(device)s"

GET_LOCK = f"SELECT s.active_agent FROM conversation_states s WHERE {KEY} AND {LIVE}"

# A new row starts at version 0; every later change adds 1. Re-setting the agent
# that already holds a live lock keeps its locked_at (the lock continues).
SET_LOCK = f"""
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
RELEASE_EXPIRED = """
WITH batch AS (
    SELECT tenant_id, device_id FROM conversation_states
    WHERE active_agent IS NOT NULL AND expires_at <= now()
    ORDER BY expires_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
UPDATE conversation_states s
SET active_agent = NULL, locked_at = NULL, expires_at = NULL, version = s.version + 1, updated_at = now()
FROM batch
WHERE s.tenant_id = batch.tenant_id AND s.device_id = batch.device_id
"""


class SessionService:
    """Gets, sets, hands off and releases the active-agent lock of a device."""

    def __init__(self, engine: Engine, *, default_ttl: int = 86400):
        self.engine = engine
        self.default_ttl = validation.ttl(default_ttl)

    def _one(self, sql: str, params: dict[str, Any]) -> Any:
        with store_errors(), self.engine.begin() as conn:
            return conn.exec_driver_sql(sql, params).scalar()

    def _key(self, device_id: str, tenant_id: str) -> dict[str, Any]:
        return {"device": validation.device_id(device_id), "tenant": validation.tenant_id(tenant_id)}

    def get_session_lock(self, device_id: str, *, tenant_id: str = "default") -> str | None:
        """The agent holding a live lock on the device, or None."""
        return self._one(GET_LOCK, self._key(device_id, tenant_id))

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
        released = 0
        while True:
            with store_errors(), self.engine.begin() as conn:
                count = conn.exec_driver_sql(RELEASE_EXPIRED, {"batch": batch_size}).rowcount
            released += count
            if count < batch_size or (deadline is not None and time.monotonic() >= deadline):
                break
        if released:
            logger.info("released %s expired locks", released)
        return released

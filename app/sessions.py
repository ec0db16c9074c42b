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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app import validation
from app.context import ContextPatch, normalized
from app.core.db import arun, arun_batches, run, run_batches
from app.core.engine import Engine
from app.errors import InvalidInput
from app.sql import fresh_context, live, message_stored

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
    last_message_at = {message_stored("s")},
    active_agent = NULL, locked_at = NULL, expires_at = NULL,
    context = {fresh_context("s")},
    version = s.version + 1,
    updated_at = now()
RETURNING s.session_id
"""


def new_session_id() -> str:
    """A sortable, human-readable session id: sess_YYYYMMDD_HHMMSS_<6 hex>, UTC."""
    return f"sess_{datetime.now(UTC):%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Operation:
    """One lock operation, ready to run: its statement, parameters and how its scalar becomes the result."""

    sql: str
    params: dict[str, Any]
    result: Callable[[Any], Any]
    read_only: bool = False


def _found(value: Any) -> bool:
    return value is not None


class _LockOperations:
    """What each lock operation runs; SessionService runs them on a thread, AsyncSessionService on the loop."""

    def __init__(self, engine: Engine, *, default_ttl: int = 86400, context_cap: int = 20):
        self.engine = engine
        self.default_ttl = validation.ttl(default_ttl)
        self.context_cap = context_cap

    def _key(self, device_id: str, tenant_id: str) -> dict[str, Any]:
        return {"device": validation.device_id(device_id), "tenant": validation.tenant_id(tenant_id)}

    def _get_lock(self, device_id: str, tenant_id: str) -> Operation:
        return Operation(GET_LOCK, self._key(device_id, tenant_id), lambda value: value, read_only=True)

    def _set_lock(self, device_id: str, agent_key: str, ttl: int | None, tenant_id: str) -> Operation:
        params = self._key(device_id, tenant_id)
        ttl = validation.ttl(ttl)
        params.update(agent=validation.agent_key(agent_key), ttl=ttl, new_ttl=ttl or self.default_ttl)
        return Operation(SET_LOCK, params, _found)

    def _clear_lock(self, device_id: str, tenant_id: str) -> Operation:
        return Operation(CLEAR_LOCK, self._key(device_id, tenant_id), _found)

    def _touch_lock(self, device_id: str, tenant_id: str) -> Operation:
        return Operation(TOUCH_LOCK, self._key(device_id, tenant_id), _found)

    def _handoff(
        self, device_id: str, from_agent: str | None, to_agent: str, ttl: int | None, tenant_id: str
    ) -> Operation:
        params = self._key(device_id, tenant_id)
        ttl = validation.ttl(ttl)
        params.update(to_agent=validation.agent_key(to_agent), ttl=ttl, new_ttl=ttl or self.default_ttl)
        if from_agent is None:
            return Operation(HANDOFF_FREE, params, _found)
        params["from_agent"] = validation.agent_key(from_agent)
        return Operation(HANDOFF_FROM, params, _found)

    @staticmethod
    def _batch_size(batch_size: int) -> int:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput("batch_size must be a positive integer")
        return batch_size

    def _get_context(self, device_id: str, tenant_id: str) -> Operation:
        return Operation(GET_CONTEXT, self._key(device_id, tenant_id), normalized, read_only=True)

    def _update_context(self, device_id: str, patch: ContextPatch | dict[str, Any], tenant_id: str) -> Operation:
        params = self._key(device_id, tenant_id)
        patch_json = json.dumps(ContextPatch.parse(patch).as_json())
        params.update(patch=patch_json, cap=self.context_cap, default_ttl=self.default_ttl)
        return Operation(UPDATE_CONTEXT, params, normalized)

    def _new_session(self, device_id: str, tenant_id: str) -> Operation:
        params = self._key(device_id, tenant_id)
        params.update(session=new_session_id(), default_ttl=self.default_ttl)
        return Operation(NEW_SESSION, params, lambda value: value)


def _released(released: int) -> int:
    if released:
        logger.info("released %s expired locks", released)
    return released


class SessionService(_LockOperations):
    """Gets, sets, hands off and releases the active-agent lock of a device (sync: scripts, seeds, the CLI).

    Every method is one statement on the engine's sync pool; AsyncSessionService has the
    same methods as coroutines, for code that runs on an event loop.
    """

    def _run(self, op: Operation) -> Any:
        return op.result(run(self.engine, op.sql, op.params, rows="scalar", read_only=op.read_only))

    def get_session_lock(self, device_id: str, *, tenant_id: str = "default") -> str | None:
        """The agent holding a live lock on the device, or None."""
        return self._run(self._get_lock(device_id, tenant_id))

    def set_session_lock(
        self, device_id: str, agent_key: str, *, ttl: int | None = None, tenant_id: str = "default"
    ) -> bool:
        """Give the device's lock to agent_key for ttl seconds (which becomes the row's session_ttl)."""
        return self._run(self._set_lock(device_id, agent_key, ttl, tenant_id))

    def clear_session_lock(self, device_id: str, *, tenant_id: str = "default") -> bool:
        """Release the device's lock; True if a live lock was held."""
        return self._run(self._clear_lock(device_id, tenant_id))

    def touch_session_lock(self, device_id: str, *, tenant_id: str = "default") -> bool:
        """Push a live lock's expiry to now + session_ttl; False if there is no live lock."""
        return self._run(self._touch_lock(device_id, tenant_id))

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
        return self._run(self._handoff(device_id, from_agent, to_agent, ttl, tenant_id))

    def cleanup_expired_sessions(self, *, batch_size: int = 5000, max_seconds: float | None = None) -> int:
        """Release expired locks in batches of batch_size; returns how many were released."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        return _released(
            run_batches(self.engine, RELEASE_EXPIRED, {}, batch_size=self._batch_size(batch_size), deadline=deadline)
        )

    def get_session_context(self, device_id: str, *, tenant_id: str = "default") -> dict[str, Any]:
        """The device's session context, with all four parts (empty for an unknown device)."""
        return self._run(self._get_context(device_id, tenant_id))

    def update_session_context(
        self, device_id: str, patch: ContextPatch | dict[str, Any], *, tenant_id: str = "default"
    ) -> dict[str, Any]:
        """Merge a patch into the context in SQL (concurrent patches keep each other's keys)."""
        return self._run(self._update_context(device_id, patch, tenant_id))

    def start_new_session(self, device_id: str, *, tenant_id: str = "default") -> str:
        """Start a new conversation for the device and return its session id."""
        return self._run(self._new_session(device_id, tenant_id))


class AsyncSessionService(_LockOperations):
    """SessionService's methods as coroutines, on the running loop's async pool (same statements, same results)."""

    async def _run(self, op: Operation) -> Any:
        return op.result(await arun(self.engine, op.sql, op.params, rows="scalar", read_only=op.read_only))

    async def get_session_lock(self, device_id: str, *, tenant_id: str = "default") -> str | None:
        """The agent holding a live lock on the device, or None."""
        return await self._run(self._get_lock(device_id, tenant_id))

    async def set_session_lock(
        self, device_id: str, agent_key: str, *, ttl: int | None = None, tenant_id: str = "default"
    ) -> bool:
        """Give the device's lock to agent_key for ttl seconds (which becomes the row's session_ttl)."""
        return await self._run(self._set_lock(device_id, agent_key, ttl, tenant_id))

    async def clear_session_lock(self, device_id: str, *, tenant_id: str = "default") -> bool:
        """Release the device's lock; True if a live lock was held."""
        return await self._run(self._clear_lock(device_id, tenant_id))

    async def touch_session_lock(self, device_id: str, *, tenant_id: str = "default") -> bool:
        """Push a live lock's expiry to now + session_ttl; False if there is no live lock."""
        return await self._run(self._touch_lock(device_id, tenant_id))

    async def handoff_session_lock(
        self,
        device_id: str,
        from_agent: str | None,
        to_agent: str,
        *,
        ttl: int | None = None,
        tenant_id: str = "default",
    ) -> bool:
        """Compare-and-set: move the lock from from_agent (None: from nobody) to to_agent."""
        return await self._run(self._handoff(device_id, from_agent, to_agent, ttl, tenant_id))

    async def cleanup_expired_sessions(self, *, batch_size: int = 5000, max_seconds: float | None = None) -> int:
        """Release expired locks in batches of batch_size; returns how many were released."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        return _released(
            await arun_batches(
                self.engine, RELEASE_EXPIRED, {}, batch_size=self._batch_size(batch_size), deadline=deadline
            )
        )

    async def get_session_context(self, device_id: str, *, tenant_id: str = "default") -> dict[str, Any]:
        """The device's session context, with all four parts (empty for an unknown device)."""
        return await self._run(self._get_context(device_id, tenant_id))

    async def update_session_context(
        self, device_id: str, patch: ContextPatch | dict[str, Any], *, tenant_id: str = "default"
    ) -> dict[str, Any]:
        """Merge a patch into the context in SQL (concurrent patches keep each other's keys)."""
        return await self._run(self._update_context(device_id, patch, tenant_id))

    async def start_new_session(self, device_id: str, *, tenant_id: str = "default") -> str:
        """Start a new conversation for the device and return its session id."""
        return await self._run(self._new_session(device_id, tenant_id))

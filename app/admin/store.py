"""The session admin store: listing, inspecting, patching, overriding and erasing sessions.

Each method is one statement, always filtered by the caller's tenant, so a key
never reads or changes another tenant's rows. Lock overrides write their audit
row in the same statement as the lock change.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from app import validation
from app.admin.statements import (
    AUDIT,
    ERASE,
    GET_STATE,
    HISTORY,
    LIST_SESSIONS,
    MESSAGES,
    OVERRIDE_CLEAR,
    OVERRIDE_SET,
    PATCH_CONTEXT,
    STATS,
)
from app.context import ContextPatch, normalized
from app.core.db import run
from app.core.engine import Engine
from app.devices import canonical_device_id
from app.erasure import NO_GUARD, ReplayGuard

logger = logging.getLogger(__name__)


class AdminStore:
    """The admin API's queries; every method takes the caller's tenant first."""

    def __init__(self, engine: Engine, *, context_cap: int = 20, guard: ReplayGuard = NO_GUARD):
        self.engine = engine
        self.context_cap = context_cap
        self.guard = guard  # NO_GUARD: an erasure keeps no hashes of its channel message ids

    def _rows(self, sql: str, params: dict[str, Any], *, read_only: bool = True) -> list[dict[str, Any]]:
        return [dict(row) for row in run(self.engine, sql, params, rows="all", read_only=read_only)]

    def _first(self, sql: str, params: dict[str, Any], *, read_only: bool = True) -> dict[str, Any] | None:
        rows = self._rows(sql, params, read_only=read_only)
        return rows[0] if rows else None

    @staticmethod
    def _key(tenant: str, device: str) -> dict[str, Any]:
        return {"tenant": validation.tenant_id(tenant), "device": canonical_device_id(device)}

    def list_sessions(
        self, tenant: str, *, limit: int, offset: int, agent: str | None = None, status: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """One row per device of the tenant, newest activity first, and the number matching."""
        params = {
            "tenant": validation.tenant_id(tenant),
            "limit": limit,
            "offset": offset,
            "agent": None if agent is None else validation.agent_key(agent),
            "status": status,
        }
        rows = self._rows(LIST_SESSIONS, params)
        total = rows[0]["total"] if rows else 0
        return [row for row in rows if row["device_id"] is not None], total

    def get_state(self, tenant: str, device: str) -> dict[str, Any] | None:
        """The device's state with its normalized context, or None."""
        row = self._first(GET_STATE, self._key(tenant, device))
        if row is not None:
            row["context"] = normalized(row["context"])
        return row

    def history(self, tenant: str, device: str) -> list[dict[str, Any]] | None:
        """The device's sessions, newest first; None for an unknown device."""
        rows = self._rows(HISTORY, self._key(tenant, device))
        if not rows or not rows[0]["known"]:
            return None
        return [row for row in rows if row["status"] is not None]

    def messages(
        self, tenant: str, device: str, *, limit: int, before: int | None = None, session_id: str | None = None
    ) -> list[dict[str, Any]] | None:
        """Up to limit messages with id < before, newest first; None for an unknown device."""
        params = self._key(tenant, device) | {"limit": limit, "before": before, "session": session_id}
        rows = self._rows(MESSAGES, params)
        if not rows or not rows[0]["known"]:
            return None
        return [row for row in rows if row["id"] is not None]

    def audit(self, tenant: str, device: str, *, limit: int, after: int | None = None) -> list[dict[str, Any]] | None:
        """Up to limit audit rows with id > after, oldest first; None for an unknown device."""
        rows = self._rows(AUDIT, self._key(tenant, device) | {"limit": limit, "after": after})
        if not rows or not rows[0]["known"]:
            return None
        return [row for row in rows if row["id"] is not None]

    def patch_context(self, tenant: str, device: str, patch: ContextPatch | dict[str, Any]) -> dict[str, Any] | None:
        """Merge a patch into an existing state's context in SQL; None if the device has no state."""
        params = self._key(tenant, device)
        params |= {"patch": json.dumps(ContextPatch.parse(patch).as_json()), "cap": self.context_cap}
        row = self._first(PATCH_CONTEXT, params, read_only=False)
        return None if row is None else normalized(row["context"])

    def override_lock(self, tenant: str, device: str, agent: str, ttl: int | None = None) -> dict[str, Any] | None:
        """Give the lock to agent (ttl also becomes the session_ttl), audited; None if no state."""
        params = self._key(tenant, device) | {"agent": validation.agent_key(agent), "ttl": validation.ttl(ttl)}
        row = self._first(OVERRIDE_SET, params, read_only=False)
        if row is not None:
            logger.info("operator gave the lock to %s (was %s)", agent, row["previous_agent"])
        return row

    def release_lock(self, tenant: str, device: str) -> dict[str, Any] | None:
        """Release any lock, audited; None if the device has no state."""
        row = self._first(OVERRIDE_CLEAR, self._key(tenant, device), read_only=False)
        if row is not None and row["previous_agent"] is not None:
            logger.info("operator released the lock of %s", row["previous_agent"])
        return row

    def erase(self, tenant: str, device: str) -> bool:
        """Delete the device's state, messages and audit rows at once; False if there were none.

        Keyed hashes of its channel message ids stay for the replay window (app/erasure.py).
        """
        row = self._first(ERASE, self._key(tenant, device) | self.guard.params(), read_only=False)
        if row is None or not any(row.values()):
            return False
        logger.info("erased a device: %s state, %s messages, %s audit rows", *row.values())
        return True

    def stats(self, tenant: str | None) -> dict[str, Any]:
        """Lock, message and cleanup figures of one tenant (None: all tenants)."""
        tenant = None if tenant is None else validation.tenant_id(tenant)
        row = self._rows(STATS, {"tenant": tenant})[0]  # the statement always returns one row
        last = None
        if row["cleanup_at"] is not None:
            last = {
                "at": row["cleanup_at"],
                "released": row["cleanup_released"],
                "deleted": row["cleanup_deleted"],
                "duration_ms": row["cleanup_duration_ms"],
            }
        return {
            "active_locks_by_agent": {k: int(v) for k, v in row["active_locks_by_agent"].items()},
            "expired_pending": int(row["expired_pending"]),
            "avg_lock_age_seconds_by_agent": {k: float(v) for k, v in row["avg_lock_age_seconds_by_agent"].items()},
            "messages_last_hour": int(row["messages_last_hour"]),
            "last_cleanup": last,
        }

"""Factories and probes for conversation_states rows."""

from __future__ import annotations

from typing import Any

from app.core.engine import Engine


def row(engine: Engine, device_id: str, tenant_id: str = "default") -> dict[str, Any] | None:
    """The raw row, with the lock's remaining seconds judged by the database clock."""
    with engine.begin() as conn:
        found = (
            conn.exec_driver_sql(
                "SELECT *, EXTRACT(EPOCH FROM expires_at - now()) AS remaining "
                "FROM conversation_states WHERE tenant_id = %(t)s AND device_id = %(d)s",
                {"t": tenant_id, "d": device_id},
            )
            .mappings()
            .first()
        )
    return dict(found) if found else None


def expire(engine: Engine, device_id: str, tenant_id: str = "default", seconds_ago: int = 1) -> None:
    """Move a lock's expiry into the past, as if its TTL had run out."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE conversation_states SET expires_at = now() - make_interval(secs => %(s)s), "
            "locked_at = LEAST(locked_at, now() - make_interval(secs => %(s)s)) "
            "WHERE tenant_id = %(t)s AND device_id = %(d)s",
            {"t": tenant_id, "d": device_id, "s": seconds_ago},
        )


def insert_locks(
    engine: Engine, count: int, *, agent: str = "scheduling", expired: bool, prefix: str = "dev", hours: int = 25
) -> None:
    """Insert count rows holding a lock, expired `hours` ago or live for `hours`."""
    sign = "-" if expired else "+"
    locked = "now() - make_interval(hours => %(h)s + 1)" if expired else "now() - interval '1 hour'"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"""
            INSERT INTO conversation_states (device_id, active_agent, locked_at, expires_at)
            SELECT %(p)s || g, %(a)s, {locked}, now() {sign} make_interval(hours => %(h)s)
            FROM generate_series(1, %(n)s) g
            """,
            {"p": prefix, "a": agent, "n": count, "h": hours},
        )

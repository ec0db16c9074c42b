"""Factories for tests: conversation states, messages and audit rows written straight with SQL.

Times are given as seconds before the database's now(), so rows can be backdated
without reading any clock in Python.
"""

from __future__ import annotations

import json
from typing import Any

from app.core.engine import Engine

TABLES = (
    "conversation_states",
    "conversation_messages",
    "conversation_audit",
    "cleanup_runs",
    "erased_channel_messages",
)


def make_state(
    engine: Engine,
    device_id: str,
    tenant_id: str = "default",
    *,
    session_id: str | None = "sess_20260101_000000_aaaaaa",
    agent: str | None = None,
    lock_seconds: int = 600,
    locked_ago: int = 60,
    session_ttl: int = 86400,
    idle_seconds: int = 0,
    context: dict[str, Any] | None = None,
    version: int = 0,
) -> None:
    """A state row; with agent, a lock that expires lock_seconds from now (negative: already expired)."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            """
            INSERT INTO conversation_states
                (tenant_id, device_id, session_id, session_started_at, last_activity_at, active_agent, locked_at,
                 expires_at, session_ttl, context, version, updated_at)
            VALUES (%(t)s, %(d)s, %(sid)s, now() - make_interval(secs => %(idle)s + 60),
                    now() - make_interval(secs => %(idle)s), %(a)s::text,
                    CASE WHEN %(a)s::text IS NOT NULL THEN now() - make_interval(secs => %(ago)s) END,
                    CASE WHEN %(a)s::text IS NOT NULL THEN now() + make_interval(secs => %(lock)s) END,
                    %(ttl)s, %(ctx)s::jsonb, %(v)s, now() - make_interval(secs => %(idle)s))
            """,
            {
                "t": tenant_id,
                "d": device_id,
                "sid": session_id,
                "a": agent,
                "ago": locked_ago,
                "lock": lock_seconds,
                "ttl": session_ttl,
                "ctx": json.dumps(context or {}),
                "v": version,
                "idle": idle_seconds,
            },
        )


def make_message(
    engine: Engine,
    device_id: str,
    tenant_id: str = "default",
    *,
    role: str = "user",
    content: str = "hello",
    session_id: str | None = "sess_20260101_000000_aaaaaa",
    agent: str | None = None,
    status: str | None = "done",
    reply_to: int | None = None,
    external_id: str | None = None,
    age_seconds: int = 0,
    has_error: bool = False,
    metadata: dict[str, Any] | None = None,
) -> int:
    """One ledger row; returns its id. Non-user rows never carry a status."""
    with engine.begin() as conn:
        return conn.exec_driver_sql(
            """
            INSERT INTO conversation_messages
                (tenant_id, device_id, role, content, agent, external_id, status, reply_to, session_id,
                 has_error, metadata, created_at)
            VALUES (%(t)s, %(d)s, %(r)s, %(c)s, %(a)s, %(x)s, %(s)s, %(rt)s, %(sid)s, %(e)s, %(m)s::jsonb,
                    now() - make_interval(secs => %(age)s))
            RETURNING id
            """,
            {
                "t": tenant_id,
                "d": device_id,
                "r": role,
                "c": content,
                "a": agent,
                "x": external_id,
                "s": status if role == "user" else None,
                "rt": reply_to,
                "sid": session_id,
                "e": has_error,
                "age": age_seconds,
                "m": json.dumps(metadata or {}),
            },
        ).scalar_one()


def make_exchange(
    engine: Engine,
    device_id: str,
    tenant_id: str = "default",
    *,
    text: str = "hi",
    reply: str = "hello!",
    agent: str = "manager",
    session_id: str | None = "sess_20260101_000000_aaaaaa",
    age_seconds: int = 0,
) -> tuple[int, int]:
    """A user message and the assistant's reply linked to it; returns both ids."""
    asked = make_message(
        engine, device_id, tenant_id, content=text, agent=agent, session_id=session_id, age_seconds=age_seconds
    )
    answered = make_message(
        engine,
        device_id,
        tenant_id,
        role="assistant",
        content=reply,
        agent=agent,
        reply_to=asked,
        session_id=session_id,
        age_seconds=age_seconds,
    )
    return asked, answered


def make_audit(
    engine: Engine,
    device_id: str,
    tenant_id: str = "default",
    *,
    event: str = "set",
    from_agent: str | None = None,
    to_agent: str | None = "scheduling",
    session_id: str | None = "sess_20260101_000000_aaaaaa",
    message_id: int | None = None,
    age_seconds: int = 0,
) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            """
            INSERT INTO conversation_audit
                (tenant_id, device_id, session_id, event, from_agent, to_agent, message_id, db_ms, agent_ms,
                 total_ms, at)
            VALUES (%(t)s, %(d)s, %(sid)s, %(e)s, %(f)s, %(to)s, %(m)s, 1, 2, 3, now() - make_interval(secs => %(age)s))
            """,
            {
                "t": tenant_id,
                "d": device_id,
                "sid": session_id,
                "e": event,
                "f": from_agent,
                "to": to_agent,
                "m": message_id,
                "age": age_seconds,
            },
        )


def snapshot(engine: Engine) -> dict[str, list[tuple]]:
    """Every row of the session tables, for "nothing changed" assertions."""
    with engine.begin() as conn:
        return {
            table: [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1, 2").all()]
            for table in TABLES
        }


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.begin() as conn:
        return conn.exec_driver_sql(sql, params).scalar()

"""Many conversations of one tenant at once, for the inbox's plan test and its benchmark (bench/inbox.py).

Written by two INSERT ... SELECT generate_series statements, not through the API: the
statements that keep last_message_at are tested one by one in tests/api/test_inbox_paging.py.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

# Conversation i (1-based) is device inbox-<i>, its one inbound message i seconds old (so device 1 is the
# newest); every HELD_EVERY-th is held for a person (its message status 'held'); odd ones are WhatsApp's.
STATES = """
INSERT INTO conversation_states (tenant_id, device_id, session_id, session_started_at, last_activity_at,
                                 last_message_at)
SELECT %(tenant)s, 'inbox-' || i, 's-' || i, now() - make_interval(secs => i), now() - make_interval(secs => i),
       now() - make_interval(secs => i)
FROM generate_series(1, %(n)s) i
"""
MESSAGES = """
INSERT INTO conversation_messages (tenant_id, device_id, role, content, status, metadata, session_id, created_at)
SELECT %(tenant)s, 'inbox-' || i, 'user', 'hello ' || i,
       CASE WHEN %(held_every)s > 0 AND i %% %(held_every)s = 0 THEN 'held' ELSE 'done' END,
       jsonb_build_object('channel', CASE WHEN i %% 2 = 1 THEN 'whatsapp' ELSE 'web' END), 's-' || i,
       now() - make_interval(secs => i)
FROM generate_series(1, %(n)s) i
"""


def page_params(tenant: str, limit: int, /, **overrides: Any) -> dict[str, Any]:
    """The parameters of app/admin/inbox.py's INBOX or INBOX_WAITING: a first page of limit with no filter (its
    walk limit + 1), then overrides, which may name limit again without moving the walk."""
    base = {
        "tenant": tenant,
        "limit": limit,
        "scan": limit + 1,
        "needs_person": False,
        "agent": None,
        "channel": None,
        "at": None,
        "device": None,
    }
    return base | overrides


def seed(conn: Connection, tenant: str, n: int, held_every: int = 0) -> None:
    """n conversations of tenant (devices inbox-1 .. inbox-n, newest first), then ANALYZE for the planner."""
    params = {"tenant": tenant, "n": n, "held_every": held_every}
    conn.exec_driver_sql(STATES, params)
    conn.exec_driver_sql(MESSAGES, params)
    conn.exec_driver_sql("ANALYZE conversation_states")
    conn.exec_driver_sql("ANALYZE conversation_messages")

"""Section inbox: a page of the operator inbox for a tenant with 100,000 conversations, before and after paging.

Before: the statement of main before migration 0013 (kept below, run in the same run on the same
tables), which computes every conversation's last message time and sorts them all; it can show
only its first `limit` (at most 200). After: app.admin.inbox's INBOX and INBOX_WAITING, a first
page, a page 90,000 conversations deep (from a cursor), the needs_person and channel filters.
Each figure is the median and p95 of ROUNDS runs of the statement alone (psycopg, one connection,
after one unmeasured run), on tables filled by tests/utils/inbox_seed.py and ANALYZEd.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from sqlalchemy.engine import Connection

from app.admin.inbox import INBOX, INBOX_WAITING, LIVE, MINE, PREVIEW_CHARS, SCAN_ROWS
from app.agents import HUMAN
from app.sql import delivery_state
from bench.common import Bench, table
from tests.utils.inbox_seed import page_params, seed

TENANT = "bench-inbox"
LIMIT = 50
HELD_EVERY = 1_000

# The inbox's statement before paging (app/admin/inbox.py at main before 0013).
BEFORE = f"""
WITH conv AS (
    SELECT s.device_id, s.display_name,
           CASE WHEN {LIVE} THEN s.active_agent END AS agent,
           CASE WHEN {LIVE} THEN s.expires_at END AS expires_at,
           CASE WHEN {LIVE} AND s.active_agent = '{HUMAN}' THEN s.operator END AS operator,
           COALESCE(lu.channel, 'web') AS channel,
           lm.id AS last_id, lm.role AS last_role, lm.agent AS last_agent, lm.delivery AS last_delivery,
           left(lm.content, {PREVIEW_CHARS}) AS last_preview,
           GREATEST(s.last_activity_at, lm.created_at) AS last_at,
           (SELECT count(*) FROM conversation_messages m
            WHERE {MINE} AND m.status = 'held' AND m.id > COALESCE(lh.id, 0)) AS waiting
    FROM conversation_states s
    LEFT JOIN LATERAL (
        SELECT m.id, m.role, m.agent, m.content, m.created_at, {delivery_state("m")} AS delivery
        FROM conversation_messages m WHERE {MINE} ORDER BY m.id DESC LIMIT 1
    ) lm ON true
    LEFT JOIN LATERAL (
        SELECT m.metadata ->> 'channel' AS channel
        FROM conversation_messages m WHERE {MINE} AND m.role = 'user' ORDER BY m.id DESC LIMIT 1
    ) lu ON true
    LEFT JOIN LATERAL (
        SELECT max(m.id) AS id FROM conversation_messages m
        WHERE {MINE} AND m.role = 'assistant' AND m.agent = '{HUMAN}'
    ) lh ON true
    WHERE s.tenant_id = %(tenant)s
)
SELECT conv.*,
       COALESCE(conv.display_name,
                CASE WHEN conv.channel = 'whatsapp' THEN 'WhatsApp ' ELSE 'Visitor ' END
                || upper(left(md5(%(tenant)s || '/' || conv.device_id), 4))) AS name,
       conv.display_name IS NOT NULL AS named
FROM conv
WHERE (NOT %(needs_person)s OR conv.waiting > 0)
  AND (%(agent)s::text IS NULL OR conv.agent = %(agent)s::text)
  AND (%(channel)s::text IS NULL OR conv.channel = %(channel)s::text)
ORDER BY conv.last_at DESC, conv.device_id
LIMIT %(limit)s
"""


def _params(**overrides: Any) -> dict[str, Any]:
    return page_params(TENANT, LIMIT, **overrides)


def _time(conn: Connection, sql: str, params: dict[str, Any], rounds: int) -> dict[str, Any]:
    rows = len(conn.exec_driver_sql(sql, params).all())  # unmeasured: plan and cache
    ms = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        conn.exec_driver_sql(sql, params).all()
        ms.append((time.perf_counter_ns() - started) / 1e6)
    ms.sort()
    return {
        "rows": rows,
        "median_ms": round(statistics.median(ms), 3),
        "p95_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.95))], 3),
    }


def run(b: Bench) -> dict[str, Any]:
    """Median and p95 ms of each page statement; see the module doc."""
    n, rounds = b.pick(100_000, 5_000), b.pick(20, 3)
    deep = n * 9 // 10
    setup = b.setup_engine()
    out: dict[str, Any] = {"conversations": n, "limit": LIMIT, "rounds": rounds, "runs": {}}
    try:
        with setup.begin() as conn:
            conn.exec_driver_sql("TRUNCATE conversation_states, conversation_messages CASCADE")
            seed(conn, TENANT, n, HELD_EVERY)
        with setup.connect() as conn:
            at = conn.exec_driver_sql(
                "SELECT last_message_at FROM conversation_states WHERE tenant_id = %(t)s AND device_id = %(d)s",
                {"t": TENANT, "d": f"inbox-{deep}"},
            ).scalar()
            cases = [
                ("before: first page", BEFORE, _params()),
                ("before: first page, limit 200", BEFORE, _params(limit=200)),
                ("before: needs_person", BEFORE, _params(needs_person=True)),
                ("after: first page", INBOX, _params()),
                (f"after: page after conversation {deep:,}", INBOX, _params(at=at, device=f"inbox-{deep}")),
                ("after: needs_person", INBOX_WAITING, _params(needs_person=True)),
                ("after: channel=web", INBOX, _params(channel="web", scan=SCAN_ROWS)),
            ]
            for name, sql, params in cases:
                out["runs"][name] = _time(conn, sql, params, rounds)
    finally:
        setup.dispose()
    rows = [[name, r["rows"], r["median_ms"], r["p95_ms"]] for name, r in out["runs"].items()]
    print(f"inbox: {n:,} conversations of one tenant, {n // HELD_EVERY} waiting for a person, {rounds} rounds")
    print(table(["statement", "rows", "median ms", "p95 ms"], rows))
    return out

"""The inbox's pages read O(limit) rows of a 20,000-conversation tenant: checked on PostgreSQL's own plan
(EXPLAIN ANALYZE row counts), never on time."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.admin.inbox import INBOX, INBOX_WAITING
from tests.utils.inbox_seed import page_params, seed

TENANT = "acme"
N = 20_000
LIMIT = 20
HELD_EVERY = 1_000  # 20 conversations wait for a person


def nodes(plan: dict[str, Any]):
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def explain(engine, sql: str, **overrides: Any) -> list[dict[str, Any]]:
    params = page_params(TENANT, LIMIT, **overrides)
    with engine.begin() as conn:
        raw = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params).scalar()
    plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    return list(nodes(plan))


def rows_read(plan: list[dict[str, Any]], relation: str) -> int:
    """Rows the plan's scans of relation returned, over all their loops."""
    return sum(n["Actual Rows"] * n["Actual Loops"] for n in plan if n.get("Relation Name") == relation)


@pytest.fixture
def many(engine):
    with engine.begin() as conn:
        seed(conn, TENANT, N, HELD_EVERY)
        at = conn.exec_driver_sql("SELECT last_message_at FROM conversation_states WHERE device_id = 'inbox-15000'")
        yield at.scalar()


def test_first_and_deep_pages_read_the_index_for_limit_rows(engine, many):
    for cursor in ({}, {"at": many, "device": "inbox-15000"}):
        plan = explain(engine, INBOX, **cursor)
        scans = {n.get("Index Name") for n in plan if n.get("Relation Name") == "conversation_states"}
        assert scans == {"conversation_states_inbox"}, cursor
        # The page and where its walk ended: limit + 1 conversations each, not 20,000.
        assert rows_read(plan, "conversation_states") <= 2 * (LIMIT + 1), cursor
        # Each returned conversation's last message, channel, operator reply and held count.
        assert rows_read(plan, "conversation_messages") <= 4 * (LIMIT + 1), cursor


def test_needs_person_reads_the_held_messages_not_the_conversations(engine, many):
    plan = explain(engine, INBOX_WAITING, needs_person=True)
    assert rows_read(plan, "conversation_states") <= N // HELD_EVERY
    held_index = [n for n in plan if n.get("Index Name") == "conversation_messages_held"]
    assert held_index and rows_read(plan, "conversation_messages") <= 6 * N // HELD_EVERY

"""Count the SQL statements an engine's connections send, at psycopg's cursor, sync and async alike."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from unittest import mock

import psycopg

from app.core import schema
from app.core.engine import Engine, lock_pools
from app.core.placeholders import numbered


@contextlib.contextmanager
def count_statements(engine: Engine, seconds: list[float] | None = None, *, when: str = "sent") -> Iterator[list[str]]:
    """Record each statement that engine's lock pools execute while open (seconds: each one's duration).

    when: "sent" records a statement as its execute starts (a statement still running is seen);
    "done" as it returns, so that the list is in the order PostgreSQL finished them: of two
    statements started together, the one that read what the other committed comes after it.

    The engine's connections are told apart by their pool (psycopg_pool marks each
    connection it lends with `_pool`); statements of other engines in the process, and
    the schema check of an engine's first connection, are not counted.
    """
    statements: list[str] = []
    pools = lock_pools(engine)

    def ours(cursor: psycopg.Cursor | psycopg.AsyncCursor) -> bool:
        owner = getattr(cursor.connection, "_pool", None)
        return owner is not None and pools.owns(owner)

    def note(cursor, query) -> None:
        text = query if isinstance(query, str) else query.as_string(cursor)
        # The schema check on an engine's first connection belongs to no operation.
        if ours(cursor) and text != schema.REVISION:
            statements.append(text)

    sync_execute, async_execute = psycopg.Cursor.execute, psycopg.AsyncCursor.execute

    def execute(self, query, params=None, **kwargs):
        if when == "sent":
            note(self, query)
        started = time.perf_counter()
        try:
            return sync_execute(self, query, params, **kwargs)
        finally:
            if when == "done":
                note(self, query)
            if seconds is not None:
                seconds.append(time.perf_counter() - started)

    async def aexecute(self, query, params=None, **kwargs):
        if when == "sent":
            note(self, query)
        started = time.perf_counter()
        try:
            return await async_execute(self, query, params, **kwargs)
        finally:
            if when == "done":
                note(self, query)
            if seconds is not None:
                seconds.append(time.perf_counter() - started)

    with (
        mock.patch.object(psycopg.Cursor, "execute", execute),
        mock.patch.object(psycopg.AsyncCursor, "execute", aexecute),
    ):
        yield statements


def work(statements: list[str]) -> list[str]:
    """The statements that do the work: without the transaction-scoped SET LOCAL timeout a pooler needs."""
    return [s for s in statements if not s.startswith("SET LOCAL statement_timeout")]


def sent(sql: str) -> str:
    """The text a cursor receives for one of the app's statements (a long one with $n placeholders)."""
    long = numbered(sql)
    return sql if long is None else long.query

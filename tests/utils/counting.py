"""Count the SQL statements an engine's connections send, at psycopg's cursor, sync and async alike."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import psycopg
from sqlalchemy.engine import Engine

from app.core import schema
from app.core.db import lock_pools


@contextlib.contextmanager
def count_statements(engine: Engine) -> Iterator[list[str]]:
    """Record each statement that engine's lock pools and SQLAlchemy connections execute while open.

    The engine's connections are told apart by their pool: psycopg_pool names itself on
    each connection it lends (psycopg_pool sets `_pool`), SQLAlchemy's by the engine's
    url. Statements of other engines in the process are not counted.
    """
    statements: list[str] = []
    pools = lock_pools(engine)

    def ours(cursor: psycopg.Cursor | psycopg.AsyncCursor) -> bool:
        owner = getattr(cursor.connection, "_pool", None)
        return owner is not None and pools.owns(owner)

    def note(cursor, query) -> None:  # noqa: ANN001
        text = query if isinstance(query, str) else query.as_string(cursor)
        # The schema check on an engine's first connection belongs to no operation.
        if ours(cursor) and text != schema.REVISION:
            statements.append(text)

    sync_execute, async_execute = psycopg.Cursor.execute, psycopg.AsyncCursor.execute

    def execute(self, query, params=None, **kwargs):  # noqa: ANN001, ANN202
        note(self, query)
        return sync_execute(self, query, params, **kwargs)

    async def aexecute(self, query, params=None, **kwargs):  # noqa: ANN001, ANN202
        note(self, query)
        return await async_execute(self, query, params, **kwargs)

    with mock.patch.object(psycopg.Cursor, "execute", execute), \
            mock.patch.object(psycopg.AsyncCursor, "execute", aexecute):
        yield statements


def work(statements: list[str]) -> list[str]:
    """The statements that do the work: without the transaction-scoped SET LOCAL timeout a pooler needs."""
    return [s for s in statements if not s.startswith("SET LOCAL statement_timeout")]

"""Count the SQL statements an engine's connections send, with psycopg's own cursor class hook."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
from sqlalchemy import event
from sqlalchemy.engine import Engine


@contextlib.contextmanager
def count_statements(engine: Engine) -> Iterator[list[str]]:
    """Record each statement executed on engine's connections while open.

    The engine's idle connections are retired first, and each connection made inside
    gets a cursor class (psycopg's Connection.cursor_factory) that notes the statement
    before running it; those connections are retired again on the way out.
    """
    statements: list[str] = []

    class Counting(psycopg.Cursor):
        def execute(self, query, params=None, **kwargs):  # noqa: ANN001, ANN201
            statements.append(query if isinstance(query, str) else query.as_string(self))
            return super().execute(query, params, **kwargs)

    def connect(dbapi_conn, record) -> None:  # noqa: ANN001
        dbapi_conn.cursor_factory = Counting

    engine.dispose()
    event.listen(engine, "connect", connect)
    try:
        yield statements
    finally:
        event.remove(engine, "connect", connect)
        engine.dispose()


def work(statements: list[str]) -> list[str]:
    """The statements that do the work: without the transaction-scoped SET LOCAL timeout a pooler needs."""
    return [s for s in statements if not s.startswith("SET LOCAL statement_timeout")]

"""Count the SQL statements an engine sends, with SQLAlchemy's cursor events."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import event
from sqlalchemy.engine import Engine


@contextlib.contextmanager
def count_statements(engine: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before)


def work(statements: list[str]) -> list[str]:
    """The statements that do the work: without the transaction-scoped SET LOCAL timeout a pooler needs."""
    return [s for s in statements if not s.startswith("SET LOCAL statement_timeout")]

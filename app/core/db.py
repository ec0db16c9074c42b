"""Engine construction and the boundary where driver errors become StoreError."""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.rows import dict_row, tuple_row
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool, QueuePool

from app.core.config import Settings
from app.errors import ConfigurationError, StoreError, StoreUnavailable

logger = logging.getLogger(__name__)


# Engines made here in autocommit mode carry this execution option: their
# one-statement operations may take the direct path in `run` below.
AUTOCOMMIT_STATEMENTS = "agent_sessions_autocommit"


def make_engine(settings: Settings, *, serverless: bool = False, url: str | None = None) -> Engine:
    """Build an engine tuned for one-statement lock operations."""
    url = url or settings.database_url
    if not url:
        raise ConfigurationError("DATABASE_URL is not set")
    connect_args: dict[str, object] = {
        "connect_timeout": settings.db_connect_timeout,
        "application_name": "agent-sessions",
        # psycopg prepares a statement after 5 runs on a connection; poolers in
        # transaction mode may hand the next run to a server that never saw it.
        "prepare_threshold": 5 if settings.db_prepare else None,
    }
    local_timeout = settings.db_statement_timeout_mode == "local"
    if settings.db_statement_timeout_ms and not local_timeout:
        connect_args["options"] = f"-c statement_timeout={settings.db_statement_timeout_ms}"

    pool = settings.db_pool or ("null" if serverless else "queue")
    pool_args: dict[str, object] = {"poolclass": NullPool}
    if pool == "queue":
        pool_args = {
            "poolclass": QueuePool,
            "pool_size": settings.db_pool_size,
            "max_overflow": settings.db_pool_size,
            "pool_timeout": settings.db_pool_timeout,
            "pool_recycle": 1800,
        }
    engine = sa.create_engine(
        url,
        connect_args=connect_args,
        execution_options={AUTOCOMMIT_STATEMENTS: not local_timeout},
        pool_pre_ping=settings.db_pre_ping,
        # Every lock operation is one statement: autocommit makes it one round trip
        # (no BEGIN/COMMIT). SET LOCAL needs a transaction, so "local" mode keeps one.
        isolation_level="READ COMMITTED" if local_timeout else "AUTOCOMMIT",
        # An autocommit connection never holds a transaction to roll back on return.
        pool_reset_on_return="rollback" if local_timeout else None,
        **pool_args,
    )
    event.listen(engine, "checkout", _discard_dead_connection)
    if local_timeout and settings.db_statement_timeout_ms:
        ms = int(settings.db_statement_timeout_ms)

        @event.listens_for(engine, "begin")
        def _set_local_timeout(conn: sa.Connection) -> None:
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")

    return engine


def _discard_dead_connection(dbapi_conn, record, proxy) -> None:  # noqa: ANN001
    # An idle connection has nothing to read. If its socket is readable the server
    # has closed it (restart, pg_terminate_backend, idle timeout): replace it now,
    # for the cost of a poll() instead of a pre-ping round trip.
    pgconn = getattr(dbapi_conn, "pgconn", None)
    if pgconn is None:
        return
    try:
        if dbapi_conn.closed or dbapi_conn.broken:
            raise exc.DisconnectionError("connection closed")
        readable, _, _ = select.select([pgconn.socket], [], [], 0)
    except (OSError, ValueError) as err:
        raise exc.DisconnectionError(str(err)) from err
    if readable:
        raise exc.DisconnectionError("server closed the connection")


# Raised when the server is down, gone or too slow; connect errors from the pool
# come unwrapped from the driver.
UNAVAILABLE = (
    exc.OperationalError, exc.InterfaceError, exc.TimeoutError, exc.DisconnectionError,
    psycopg.OperationalError, psycopg.InterfaceError,
)


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Turn driver and pool errors into StoreUnavailable / StoreError."""
    try:
        yield
    except UNAVAILABLE as err:
        raise StoreUnavailable(_describe(err)) from err
    except psycopg.Error as err:
        raise StoreError(_describe(err)) from err
    except exc.DBAPIError as err:
        if err.connection_invalidated:
            raise StoreUnavailable(_describe(err)) from err
        raise StoreError(_describe(err)) from err


def run(engine: Engine, sql: str, params: dict[str, Any], *, rows: str = "first") -> Any:
    """Run one statement; return its first row (a dict), its first value ("scalar") or all rows ("all").

    On an autocommit engine from make_engine this checks a pooled connection out
    and uses its psycopg cursor directly: SQLAlchemy's Connection layer would cost
    more than the round trip itself. Engine-level before/after_cursor_execute
    listeners still see every statement. Other engines take the ordinary path.
    """
    if not engine.get_execution_options().get(AUTOCOMMIT_STATEMENTS):
        with store_errors(), engine.begin() as conn:
            result = conn.exec_driver_sql(sql, params)
            if not result.returns_rows:
                return [] if rows == "all" else None
            if rows == "scalar":
                return result.scalar()
            mapped = result.mappings()
            return [dict(r) for r in mapped] if rows == "all" else (dict(r) if (r := mapped.first()) else None)
    with store_errors():
        fairy = engine.raw_connection()
    try:
        cursor = fairy.cursor(row_factory=tuple_row if rows == "scalar" else dict_row)
        dispatch = engine.dispatch
        if dispatch.before_cursor_execute:
            dispatch.before_cursor_execute(None, cursor, sql, params, None, False)
        cursor.execute(sql, params)
        if dispatch.after_cursor_execute:
            dispatch.after_cursor_execute(None, cursor, sql, params, None, False)
        if rows == "all":
            return cursor.fetchall() if cursor.description else []
        row = cursor.fetchone() if cursor.description else None
        return row[0] if rows == "scalar" and row is not None else row
    except psycopg.Error as err:
        if isinstance(err, psycopg.OperationalError | psycopg.InterfaceError) or fairy.dbapi_connection.broken:
            fairy.invalidate(err)  # a fresh connection next time
            raise StoreUnavailable(_describe(err)) from err
        raise StoreError(_describe(err)) from err
    finally:
        fairy.close()


def run_batches(engine: Engine, sql: str, params: dict, *, batch_size: int, deadline: float | None) -> int:
    """Run a one-batch statement (returning its row count as a scalar) until a short batch or the deadline."""
    total = 0
    while True:
        count = run(engine, sql, {**params, "batch": batch_size}, rows="scalar") or 0
        total += count
        if count < batch_size or (deadline is not None and time.monotonic() >= deadline):
            return total


def _describe(err: Exception) -> str:
    orig = getattr(err, "orig", None) or err
    return f"{type(orig).__name__}: {str(orig).strip().splitlines()[0] if str(orig).strip() else ''}"


class Database:
    """Holds the process's engine, created on first use."""

    def __init__(self, settings: Settings, *, serverless: bool = False, engine: Engine | None = None):
        self.settings = settings
        self.serverless = serverless
        self._engine = engine
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = make_engine(self.settings, serverless=self.serverless)
        return self._engine

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

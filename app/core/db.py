"""Engine construction and the boundary where driver errors become StoreError."""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections.abc import Iterator
from typing import Any

from datetime import UTC

import psycopg
import sqlalchemy as sa
from psycopg.rows import dict_row, tuple_row
from psycopg.types.datetime import TimestamptzBinaryLoader, TimestamptzLoader
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool, QueuePool

from app.core import schema
from app.core.config import Settings
from app.errors import ConfigurationError, StoreError, StoreUnavailable

logger = logging.getLogger(__name__)


# Engines made here in autocommit mode carry this execution option: their
# one-statement operations may take the direct path in `run` below.
AUTOCOMMIT_STATEMENTS = "agent_sessions_autocommit"


def make_engine(settings: Settings, *, serverless: bool = False, url: str | None = None) -> Engine:
    """Build an engine tuned for one-statement lock operations; it connects on first use, never here.

    Every connection has TCP keepalives (DB_KEEPALIVES_*), hands timestamps back in UTC
    whatever the session's TimeZone, and is bounded by DB_CONNECT_TIMEOUT and
    DB_STATEMENT_TIMEOUT_MS. Raises ConfigurationError without a URL.
    """
    url = url or settings.database_url
    if not url:
        raise ConfigurationError("DATABASE_URL is not set")
    connect_args: dict[str, object] = {
        "connect_timeout": settings.db_connect_timeout,
        "application_name": "agent-sessions",
        # psycopg prepares a statement after 5 runs on a connection; poolers in
        # transaction mode may hand the next run to a server that never saw it.
        "prepare_threshold": 5 if settings.prepare else None,
        # libpq keepalives: a peer that vanished without a FIN makes the idle socket
        # fail within idle + interval * count seconds, so the pool's checkout drops it.
        "keepalives": 1,
        "keepalives_idle": settings.db_keepalives_idle,
        "keepalives_interval": settings.db_keepalives_interval,
        "keepalives_count": settings.db_keepalives_count,
    }
    local_timeout = settings.statement_timeout_mode == "local"
    if settings.db_statement_timeout_ms and not local_timeout:
        connect_args["options"] = f"-c statement_timeout={settings.db_statement_timeout_ms}"
    _log_pooler_choice(settings)

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
    event.listen(engine, "connect", _utc_timestamps)
    event.listen(engine, "first_connect", schema.on_first_connect)
    event.listen(engine, "checkout", _discard_dead_connection)
    if local_timeout and settings.db_statement_timeout_ms:
        ms = int(settings.db_statement_timeout_ms)

        @event.listens_for(engine, "begin")
        def _set_local_timeout(conn: sa.Connection) -> None:
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")

    return engine


def _log_pooler_choice(settings: Settings) -> None:
    # One line per engine (one per process in a server), so an operator sees what a pooler setting did.
    if settings.statement_timeout_mode == "startup" and settings.prepare:
        return
    reason = f"DB_POOLER={settings.db_pooler}" if settings.db_pooler == "transaction" else "DB_PREPARE=false"
    logger.info(
        "%s: prepared statements %s, statement timeout set %s",
        reason,
        "on" if settings.prepare else "off",
        "per transaction (SET LOCAL), no startup options" if settings.statement_timeout_mode == "local"
        else "as a startup option",
    )


UTC_ZONES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Zulu", "Etc/Zulu",
                       "GMT", "Etc/GMT", "Etc/GMT+0", "Etc/GMT-0", "Etc/Greenwich", "Greenwich", "GMT0"})


class _UtcTimestamptzLoader(TimestamptzLoader):
    # psycopg returns timestamptz in the session's TimeZone (a role or database may set
    # '+05:30'); the API promises UTC, so convert once here, for every statement.
    def load(self, data):  # noqa: ANN001, ANN201
        return super().load(data).astimezone(UTC)


class _UtcTimestamptzBinaryLoader(TimestamptzBinaryLoader):
    def load(self, data):  # noqa: ANN001, ANN201
        return super().load(data).astimezone(UTC)


def _utc_timestamps(dbapi_conn, record) -> None:  # noqa: ANN001
    # The server reports its TimeZone at startup; under UTC psycopg's own (C) loader is right.
    info = getattr(dbapi_conn, "info", None)
    zone = info.parameter_status("TimeZone") if info is not None else None
    if zone in UTC_ZONES:
        return
    adapters = getattr(dbapi_conn, "adapters", None)
    if adapters is not None:
        adapters.register_loader("timestamptz", _UtcTimestamptzLoader)
        adapters.register_loader("timestamptz", _UtcTimestamptzBinaryLoader)


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


def run(engine: Engine, sql: str, params: dict[str, Any], *, rows: str = "first", read_only: bool = False) -> Any:
    """Run one statement; return its first row (a dict), its first value ("scalar") or all rows ("all").

    On an autocommit engine from make_engine this checks a pooled connection out
    and uses its psycopg cursor directly: SQLAlchemy's Connection layer would cost
    more than the round trip itself. Engine-level before/after_cursor_execute
    listeners still see every statement. Other engines take the ordinary path.

    A connection found dead invalidates every pooled connection older than it (as
    SQLAlchemy's own path does): they went through the same outage or middlebox. A
    read_only statement that failed that way runs once more on a fresh connection;
    a write never does, since it may have been applied before the connection broke.
    Raises StoreUnavailable (down, gone, too slow) or StoreError (refused).
    """
    try:
        return _run_once(engine, sql, params, rows)
    except StoreUnavailable as err:
        if not (read_only and isinstance(err, _Disconnected)):
            raise
        logger.info("retrying a read on a fresh connection after a disconnect: %s", err)
        return _run_once(engine, sql, params, rows)


class _Disconnected(StoreUnavailable):
    """A pooled connection turned out dead mid-statement (the pool was invalidated)."""


def _run_once(engine: Engine, sql: str, params: dict[str, Any], rows: str) -> Any:
    if not engine.get_execution_options().get(AUTOCOMMIT_STATEMENTS):
        try:
            with store_errors(), engine.begin() as conn:
                result = conn.exec_driver_sql(sql, params)
                if not result.returns_rows:
                    return [] if rows == "all" else None
                if rows == "scalar":
                    return result.scalar()
                mapped = result.mappings()
                return [dict(r) for r in mapped] if rows == "all" else (dict(r) if (r := mapped.first()) else None)
        except StoreUnavailable as err:
            cause = err.__cause__
            if isinstance(cause, exc.DBAPIError) and cause.connection_invalidated:
                raise _Disconnected(str(err)) from cause
            raise
    with store_errors():
        fairy = engine.raw_connection()
    cursor = None
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
        dbapi_conn = fairy.dbapi_connection
        if engine.dialect.is_disconnect(err, dbapi_conn, cursor) or (dbapi_conn is not None and dbapi_conn.broken):
            # The pool's own disconnect handling: stamp an invalidation time, so every
            # connection made before it is replaced at its next checkout.
            engine.pool._invalidate(fairy, err)  # noqa: SLF001 - what Connection does on is_disconnect
            raise _Disconnected(_describe(err)) from err
        if isinstance(err, psycopg.OperationalError | psycopg.InterfaceError):
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

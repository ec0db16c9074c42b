"""Engine construction, the one-statement path (`run`), and the boundary where driver errors become StoreError."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.rows import dict_row, tuple_row
from psycopg.types.datetime import TimestamptzBinaryLoader, TimestamptzLoader
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool, QueuePool

from app.core import schema
from app.core.config import Settings
from app.core.pool import ConnectionPool, EngineCheckout, server_closed
from app.errors import ConfigurationError, StoreError, StoreUnavailable

logger = logging.getLogger(__name__)


def make_engine(settings: Settings, *, serverless: bool = False, url: str | None = None) -> Engine:
    """Build an engine tuned for one-statement lock operations; it connects on first use, never here.

    Every connection has TCP keepalives (DB_KEEPALIVES_*), hands timestamps back in UTC
    whatever the session's TimeZone, and is bounded by DB_CONNECT_TIMEOUT and
    DB_STATEMENT_TIMEOUT_MS. `run` draws its connections from the engine's
    `connection_pool` (DB_POOL_SIZE idle, twice that open at once, DB_POOL_TIMEOUT);
    SQLAlchemy's own pool serves migrations and imports. Raises ConfigurationError
    without a URL.
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
        pool_pre_ping=settings.db_pre_ping,
        # Every lock operation is one statement: autocommit makes it one round trip
        # (no BEGIN/COMMIT); `run` opens a transaction where SET LOCAL needs one.
        isolation_level="AUTOCOMMIT",
        # An autocommit connection never holds a transaction to roll back on return.
        pool_reset_on_return=None,
        **pool_args,
    )
    event.listen(engine, "connect", _utc_timestamps)
    event.listen(engine, "first_connect", schema.on_first_connect)
    event.listen(engine, "checkout", _discard_dead_connection)
    local_ms = int(settings.db_statement_timeout_ms or 0) if local_timeout else 0
    if local_ms:

        @event.listens_for(engine, "begin")
        def _set_local_timeout(conn: sa.Connection) -> None:
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {local_ms}")

    size = settings.db_pool_size if pool == "queue" else 0
    _register(engine, ConnectionPool(
        engine, size=size, limit=2 * size, timeout=settings.db_pool_timeout,
        recycle=1800 if size else None, local_timeout_ms=local_ms, pre_ping=settings.db_pre_ping,
    ))
    return engine


# The pool is kept on its engine, so the two are collected together: a registry keyed
# weakly by engine would keep every engine alive, since its pool refers back to it.
_POOL_ATTRIBUTE = "_lock_operations_pool"
_POOLS_LOCK = threading.Lock()


def _register(engine: Engine, pool: ConnectionPool | EngineCheckout) -> ConnectionPool | EngineCheckout:
    with _POOLS_LOCK:
        existing = getattr(engine, _POOL_ATTRIBUTE, None)
        if existing is not None:
            return existing
        setattr(engine, _POOL_ATTRIBUTE, pool)
    # dispose() (shutdown, tests, a disconnect below) retires this pool's connections too.
    event.listen(engine, "engine_disposed", lambda _engine: pool.discard_all())
    return pool


def connection_pool(engine: Engine) -> ConnectionPool | EngineCheckout:
    """Where `run` takes engine's connections: its ConnectionPool if make_engine made it, else the engine's own pool."""
    pool = getattr(engine, _POOL_ATTRIBUTE, None)
    if pool is not None:
        return pool
    return _register(engine, EngineCheckout(engine))


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
    # The same check as the lock operations' pool, for SQLAlchemy's own checkouts.
    if isinstance(dbapi_conn, psycopg.Connection) and server_closed(dbapi_conn):
        raise exc.DisconnectionError("server closed the connection")


# Raised when the server is down, gone or too slow; connect errors from the pool
# come unwrapped from the driver.
UNAVAILABLE = (
    exc.OperationalError, exc.InterfaceError, exc.TimeoutError, exc.DisconnectionError,
    psycopg.OperationalError, psycopg.InterfaceError,
)
FAILURES = (*UNAVAILABLE, psycopg.Error, exc.DBAPIError)


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Turn driver and pool errors into StoreUnavailable / StoreError."""
    try:
        yield
    except FAILURES as err:
        raise _store_error(err) from err


def _store_error(err: Exception) -> StoreError:
    if isinstance(err, UNAVAILABLE) or (isinstance(err, exc.DBAPIError) and err.connection_invalidated):
        return StoreUnavailable(_describe(err))
    return StoreError(_describe(err))


def run(engine: Engine, sql: str, params: dict[str, Any], *, rows: str = "first", read_only: bool = False) -> Any:
    """Run one statement; return its first row (a dict), its first value ("scalar") or all rows ("all").

    Every module's one-statement operations come here. The statement runs on a
    connection of the engine's `connection_pool`: on an autocommit engine from
    make_engine that is one round trip, with no BEGIN or COMMIT; with a
    per-transaction statement timeout (DB_POOLER=transaction) or on an engine that
    is not autocommit, it runs in a psycopg transaction.

    A connection found dead retires every connection made before it (the pool's and
    the engine's): they went through the same outage or middlebox. A read_only
    statement that failed that way runs once more on a fresh connection; a write
    never does, since it may have been applied before the connection broke.
    Raises StoreUnavailable (down, gone, too slow) or StoreError (refused).
    """
    pool = connection_pool(engine)
    try:
        return _run_once(pool, sql, params, rows)
    except _Disconnected as err:
        if not read_only:
            raise
        logger.info("retrying a read on a fresh connection after a disconnect: %s", err)
        return _run_once(pool, sql, params, rows)


class _Disconnected(StoreUnavailable):
    """A pooled connection turned out dead mid-statement (the pool was disposed of)."""


def _run_once(pool: ConnectionPool | EngineCheckout, sql: str, params: dict[str, Any], rows: str) -> Any:
    try:
        lent = pool.get()
    except FAILURES as err:
        raise _store_error(err) from err
    conn = lent.connection
    try:
        if conn.autocommit and not pool.local_timeout_ms:
            result = _execute(conn, sql, params, rows)
        else:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                # A connect listener's statement opened a transaction on a non-autocommit
                # connection; commit it, or transaction() would only add a savepoint and the
                # statement below would be rolled back when the connection is closed.
                conn.commit()
            with conn.transaction():
                if pool.local_timeout_ms:
                    conn.execute(f"SET LOCAL statement_timeout = {pool.local_timeout_ms}")
                result = _execute(conn, sql, params, rows)
    except psycopg.Error as err:
        if conn.broken or pool.engine.dialect.is_disconnect(err, conn, None):
            pool.put(lent, discard=True)
            # What SQLAlchemy's Connection does on a disconnect: connections older than this
            # one are not trusted either. dispose() retires both pools' idle connections;
            # lent ones finish their work and are closed on return.
            pool.engine.dispose(close=False)
            raise _Disconnected(_describe(err)) from err
        wrapped = _store_error(err)
        # A refused statement leaves an autocommit connection idle and fit for reuse.
        pool.put(lent, discard=isinstance(wrapped, StoreUnavailable))
        raise wrapped from err
    except BaseException:
        pool.put(lent, discard=True)
        raise
    pool.put(lent)
    return result


def _execute(conn: psycopg.Connection, sql: str, params: dict[str, Any], rows: str) -> Any:
    with conn.cursor(row_factory=tuple_row if rows == "scalar" else dict_row) as cursor:
        cursor.execute(sql, params)
        # rownumber is None when the statement returned no result set (cheaper than description).
        if cursor.rownumber is None:
            return [] if rows == "all" else None
        if rows == "all":
            return cursor.fetchall()
        row = cursor.fetchone()
        return row[0] if rows == "scalar" and row is not None else row


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

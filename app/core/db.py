"""The database handle (`Engine`), the one-statement path (`run`), and where driver errors become StoreError.

The request path runs its statements on psycopg's pools (app/core/pools.py) and never
imports SQLAlchemy: a cold start pays only for psycopg. Migrations and the admin import
use a SQLAlchemy engine, built on first use from the same settings.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import anyio
import psycopg
from psycopg.rows import BaseRowFactory, dict_row, tuple_row
from psycopg_pool import PoolTimeout
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random,
)

from app.core import schema
from app.core.config import Settings
from app.core.pools import LockPools, PoolConfig, has_input, utc_timestamps
from app.errors import ConfigurationError, StoreError, StoreUnavailable

if TYPE_CHECKING:
    import sqlalchemy as sa

logger = logging.getLogger(__name__)


class Engine:
    """One database's handle: psycopg pools for `run` and `arun`, and a SQLAlchemy engine made on first use.

    Not SQLAlchemy's Engine, though `connect`, `begin` and `raw_connection` hand over to
    one (`sqlalchemy`): migrations and the admin import need it, the request path does not,
    so a process that only serves requests never imports SQLAlchemy. Made by make_engine;
    nothing connects before the first statement.
    """

    def __init__(self, url: str, pools: LockPools, sqlalchemy_args: dict[str, Any], local_timeout_ms: int) -> None:
        self.url = url  # postgresql+psycopg://..., SQLAlchemy's spelling (the pools use pools.config.conninfo)
        self.pools = pools
        self._sqlalchemy_args = sqlalchemy_args
        self._local_timeout_ms = local_timeout_ms
        self._sqlalchemy: sa.Engine | None = None
        self._lock = threading.Lock()

    @property
    def sqlalchemy(self) -> sa.Engine:
        """The SQLAlchemy engine of the same database and settings, created (and SQLAlchemy imported) on first use."""
        engine = self._sqlalchemy
        if engine is None:
            with self._lock:
                if self._sqlalchemy is None:
                    self._sqlalchemy = _sqlalchemy_engine(self.url, self._sqlalchemy_args, self._local_timeout_ms)
                engine = self._sqlalchemy
        return engine

    def connect(self) -> sa.Connection:
        """A SQLAlchemy connection (autocommit; a migration or an import sets its own isolation level)."""
        return self.sqlalchemy.connect()

    def begin(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """A SQLAlchemy connection in a transaction, committed when the block ends without an error."""
        return self.sqlalchemy.begin()

    def raw_connection(self) -> Any:
        """A driver connection from SQLAlchemy's pool, as SQLAlchemy's Engine.raw_connection."""
        return self.sqlalchemy.raw_connection()

    def dispose(self, close: bool = True) -> None:
        """close=True (shutdown, tests): close the sync pool and SQLAlchemy's connections.

        close=False (after a disconnect): SQLAlchemy's pool is replaced without touching the
        connections it lent; the psycopg pools are drained by the caller. Async pools are
        closed by LockPools.aclose, in their own loop.
        """
        if close:
            self.pools.close()
        engine = self._sqlalchemy
        if engine is not None:
            engine.dispose(close=close)


def make_engine(settings: Settings, *, serverless: bool = False, url: str | None = None) -> Engine:
    """Build the handle for one-statement lock operations; it connects on first use, never here.

    Every connection has TCP keepalives (DB_KEEPALIVES_*), hands timestamps back in UTC
    whatever the session's TimeZone, and is bounded by DB_CONNECT_TIMEOUT and
    DB_STATEMENT_TIMEOUT_MS. `run` draws its connections from the handle's psycopg
    pools (DB_POOL_SIZE idle, twice that open at once, DB_POOL_TIMEOUT; a null pool
    with DB_POOL=null or serverless); the SQLAlchemy engine that serves migrations and
    imports (queue or null pool alike) is made on first use. Imports nothing of
    SQLAlchemy. Raises ConfigurationError without a URL.
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
    sqlalchemy_args: dict[str, Any] = {"connect_args": connect_args, "pool": pool, "pre_ping": settings.db_pre_ping}
    if pool == "queue":
        sqlalchemy_args |= {"pool_size": settings.db_pool_size, "pool_timeout": settings.db_pool_timeout}
    local_ms = int(settings.db_statement_timeout_ms or 0) if local_timeout else 0
    size = settings.db_pool_size if pool == "queue" else 0
    config = PoolConfig(
        libpq_url(url), dict(connect_args), size, settings.db_pool_timeout, settings.db_pre_ping, local_ms
    )
    return Engine(sqlalchemy_url(url), LockPools(config), sqlalchemy_args, local_ms)


def _scheme_and_rest(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError("DATABASE_URL must be a URL such as postgresql://user:password@host:5432/database")
    return scheme.lower(), rest


def libpq_url(url: str) -> str:
    """url as libpq reads it (postgresql://...): the driver name SQLAlchemy needs dropped, the rest untouched."""
    return "postgresql://" + _scheme_and_rest(url)[1]


def sqlalchemy_url(url: str) -> str:
    """url as SQLAlchemy reads it: postgresql+psycopg://..., psycopg 3 named (Settings spells it so already)."""
    scheme, rest = _scheme_and_rest(url)
    return url if "+" in scheme else "postgresql+psycopg://" + rest


def _sqlalchemy_engine(url: str, args: dict[str, Any], local_ms: int) -> sa.Engine:
    # Imported here, not at module level: only migrations, the admin import and tests get this far.
    import sqlalchemy as sa
    from sqlalchemy import event
    from sqlalchemy.pool import NullPool, QueuePool

    pool_args: dict[str, object] = {"poolclass": NullPool}
    if args["pool"] == "queue":
        pool_args = {
            "poolclass": QueuePool,
            "pool_size": args["pool_size"],
            "max_overflow": args["pool_size"],
            "pool_timeout": args["pool_timeout"],
            "pool_recycle": 1800,
        }
    engine = sa.create_engine(
        url,
        connect_args=args["connect_args"],
        pool_pre_ping=args["pre_ping"],
        # Every lock operation is one statement: autocommit makes it one round trip
        # (no BEGIN/COMMIT); a migration or an import opens its own transaction.
        isolation_level="AUTOCOMMIT",
        # An autocommit connection never holds a transaction to roll back on return.
        pool_reset_on_return=None,
        **pool_args,
    )
    event.listen(engine, "connect", _utc_timestamps)
    event.listen(engine, "first_connect", schema.on_first_connect)
    event.listen(engine, "checkout", _discard_dead_connection)
    if local_ms:

        @event.listens_for(engine, "begin")
        def _set_local_timeout(conn: sa.Connection) -> None:
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {local_ms}")

    return engine


def lock_pools(engine: Engine) -> LockPools:
    """Where `run` and `arun` take engine's connections; ConfigurationError for an engine not from make_engine."""
    pools = getattr(engine, "pools", None)
    if not isinstance(pools, LockPools):
        raise ConfigurationError("this engine was not made by app.core.db.make_engine: it has no lock pools")
    return pools


def _log_pooler_choice(settings: Settings) -> None:
    # One line per engine (one per process in a server), so an operator sees what a pooler setting did.
    if settings.statement_timeout_mode == "startup" and settings.prepare:
        return
    reason = f"DB_POOLER={settings.db_pooler}" if settings.db_pooler == "transaction" else "DB_PREPARE=false"
    logger.info(
        "%s: prepared statements %s, statement timeout set %s",
        reason,
        "on" if settings.prepare else "off",
        "per transaction (SET LOCAL), no startup options"
        if settings.statement_timeout_mode == "local"
        else "as a startup option",
    )


def _utc_timestamps(dbapi_conn, record) -> None:  # noqa: ANN001
    utc_timestamps(dbapi_conn)


def _discard_dead_connection(dbapi_conn, record, proxy) -> None:  # noqa: ANN001
    # The same check as the lock operations' pools, for SQLAlchemy's own checkouts.
    if isinstance(dbapi_conn, psycopg.Connection) and has_input(dbapi_conn):
        try:
            dbapi_conn.execute("SELECT 1")
        except psycopg.Error as err:
            from sqlalchemy import exc  # loaded already: this is a SQLAlchemy event

            raise exc.DisconnectionError("server closed the connection") from err


# Raised when the server is down, gone or too slow; connect errors from the pool
# come unwrapped from the driver.
UNAVAILABLE: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
FAILURES: tuple[type[Exception], ...] = (*UNAVAILABLE, psycopg.Error)


def _sqlalchemy_errors() -> Any:
    # SQLAlchemy's exception module if SQLAlchemy was imported, else None: an error of
    # SQLAlchemy's can only come from a process that imported it, so a request path
    # that never did need not import it just to tell its errors apart.
    return sys.modules.get("sqlalchemy.exc")


def _unavailable() -> tuple[type[Exception], ...]:
    exc = _sqlalchemy_errors()
    if exc is None:
        return UNAVAILABLE
    return (*UNAVAILABLE, exc.OperationalError, exc.InterfaceError, exc.TimeoutError, exc.DisconnectionError)


def _failures() -> tuple[type[Exception], ...]:
    exc = _sqlalchemy_errors()
    return FAILURES if exc is None else (*FAILURES, *_unavailable(), exc.DBAPIError)


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Turn driver and pool errors into StoreUnavailable / StoreError: psycopg's, and SQLAlchemy's once imported."""
    try:
        yield
    except Exception as err:
        if isinstance(err, _failures()):
            raise _store_error(err) from err
        raise


def _store_error(err: Exception) -> StoreError:
    exc = _sqlalchemy_errors()
    invalidated = exc is not None and isinstance(err, exc.DBAPIError) and err.connection_invalidated
    if isinstance(err, _unavailable()) or invalidated:
        return StoreUnavailable(_describe(err))
    return StoreError(_describe(err))


def run(engine: Engine, sql: str, params: dict[str, Any], *, rows: str = "first", read_only: bool = False) -> Any:
    """Run one statement; return its first row (a dict), its first value ("scalar") or all rows ("all").

    The sync path (the seed API's SessionService, the CLI, the cleanup run): a
    connection of engine's sync psycopg pool (`lock_pools`), autocommit, so one round
    trip with no BEGIN or COMMIT; with a per-transaction statement timeout
    (DB_POOLER=transaction) the statement runs in a transaction after SET LOCAL.

    A statement the server rolled back to break a deadlock or a serialization conflict
    runs once more (nothing of it was applied). A connection found dead retires every
    connection made before it (the pool is
    drained, SQLAlchemy's too): they went through the same outage or middlebox. A
    read_only statement that failed that way runs once more on a fresh connection; a
    write never does, since it may have been applied before the connection broke.
    Raises StoreUnavailable (down, gone, too slow) or StoreError (refused).
    """
    pools = lock_pools(engine)
    try:
        try:
            return _run_once(engine, pools, sql, params, rows)
        except _Conflict as first:
            # Only a statement that conflicted pays for tenacity (about 9 us a call otherwise):
            # its first attempt is the run above, the second waits CONFLICT_RETRY's pause.
            for attempt in Retrying(**CONFLICT_RETRY):
                with attempt:
                    if attempt.retry_state.attempt_number == 1:
                        raise first
                    return _run_once(engine, pools, sql, params, rows)
            raise AssertionError("unreachable: tenacity returns or reraises") from None  # pragma: no cover
    except _Disconnected as err:
        if not read_only:
            raise
        logger.info("retrying a read on a fresh connection after a disconnect: %s", err)
        return _run_once(engine, pools, sql, params, rows)


async def arun(
    engine: Engine, sql: str, params: dict[str, Any], *, rows: str = "first", read_only: bool = False
) -> Any:
    """`run` as a coroutine, on the running loop's async pool: the request path's one-statement operations.

    The same shapes, errors and retry rule as `run`; no thread is held while the statement runs.
    """
    pools = lock_pools(engine)
    try:
        try:
            return await _arun_once(engine, pools, sql, params, rows)
        except _Conflict as first:
            async for attempt in AsyncRetrying(**CONFLICT_RETRY):  # as in run: the first attempt was above
                with attempt:
                    if attempt.retry_state.attempt_number == 1:
                        raise first
                    return await _arun_once(engine, pools, sql, params, rows)
            raise AssertionError("unreachable: tenacity returns or reraises") from None  # pragma: no cover
    except _Disconnected as err:
        if not read_only:
            raise
        logger.info("retrying a read on a fresh connection after a disconnect: %s", err)
        return await _arun_once(engine, pools, sql, params, rows)


class _Disconnected(StoreUnavailable):
    """A pooled connection turned out dead mid-statement (the pool was drained)."""


class _Conflict(StoreError):
    """The server rolled the statement back to break a deadlock or a serialization conflict.

    Every statement here runs alone (autocommit, or its own transaction), so nothing of it
    was applied: running it once more is safe, and is what PostgreSQL's manual advises
    ("Serialization Failure Handling"). A second conflict is reported as StoreError.
    """


# SQLSTATE 40P01 deadlock_detected, 40001 serialization_failure.
CONFLICTS = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


def _log_conflict(state: RetryCallState) -> None:
    logger.info("retrying a statement the server rolled back: %s", state.outcome.exception() if state.outcome else "")


# Once more, after a short random pause: run at once, it could meet the same other
# transaction at the same lock again.
CONFLICT_RETRY: dict[str, Any] = {
    "retry": retry_if_exception_type(_Conflict),
    "stop": stop_after_attempt(2),
    "wait": wait_random(0.01, 0.05),
    "before_sleep": _log_conflict,
    "reraise": True,
}


def _disconnected(conn: psycopg.Connection | psycopg.AsyncConnection) -> bool:
    # What SQLAlchemy's psycopg dialect counts as a disconnect: the connection is closed or broken.
    return bool(conn.broken or conn.closed)


def _run_direct(pools: LockPools, sql: str, params: dict[str, Any], rows: str) -> Any:
    # During an outage: one connection of our own, so the caller learns at once whether the
    # server is back (connect refused or DB_CONNECT_TIMEOUT), instead of waiting out the pool.
    try:
        with psycopg.connect(pools.config.conninfo, **pools.connect_kwargs()) as conn:
            pools.failed_at = None
            utc_timestamps(conn)
            return _execute(conn, sql, params, rows)
    except psycopg.Error as err:
        pools.failed_at = time.monotonic()
        raise _store_error(err) from err


async def _arun_direct(pools: LockPools, sql: str, params: dict[str, Any], rows: str) -> Any:
    try:
        async with await psycopg.AsyncConnection.connect(pools.config.conninfo, **pools.connect_kwargs()) as conn:
            pools.failed_at = None
            utc_timestamps(conn)
            return await _aexecute(conn, sql, params, rows)
    except psycopg.Error as err:
        pools.failed_at = time.monotonic()
        raise _store_error(err) from err


# A caller waits for a pooled connection in slices this long, looking for an outage between them.
WAIT_SLICE_SECONDS = 0.25


def _run_once(engine: Engine, pools: LockPools, sql: str, params: dict[str, Any], rows: str) -> Any:
    pool = pools.sync_pool()
    deadline = time.monotonic() + pools.config.timeout
    while True:
        if pools.outage():
            return _run_direct(pools, sql, params, rows)
        left = deadline - time.monotonic()
        try:
            conn = pool.getconn(timeout=max(0.001, min(WAIT_SLICE_SECONDS, left)))
            break
        except PoolTimeout as err:
            if left <= WAIT_SLICE_SECONDS:
                raise _store_error(err) from err
        except FAILURES as err:
            raise _store_error(err) from err
    try:
        if pools.local_timeout_ms:
            with conn.transaction():
                conn.execute(f"SET LOCAL statement_timeout = {pools.local_timeout_ms}")
                result = _execute(conn, sql, params, rows)
        else:
            result = _execute(conn, sql, params, rows)
    except psycopg.Error as err:
        pool.putconn(conn)  # psycopg_pool discards a broken or non-idle connection itself
        if _disconnected(conn):
            pools.failed_at = time.monotonic()
            # What SQLAlchemy does on a disconnect: connections older than this one are not
            # trusted either. Lent ones finish their work and are closed on return.
            pools.drain()
            engine.dispose(close=False)
            raise _Disconnected(_describe(err)) from err
        if isinstance(err, CONFLICTS):
            raise _Conflict(_describe(err)) from err
        raise _store_error(err) from err
    except BaseException:
        conn.close()  # interrupted mid-statement: its state is unknown
        pool.putconn(conn)
        raise
    pool.putconn(conn)
    return result


async def _arun_once(engine: Engine, pools: LockPools, sql: str, params: dict[str, Any], rows: str) -> Any:
    pool = await pools.async_pool()
    deadline = time.monotonic() + pools.config.timeout
    while True:
        if pools.outage():
            return await _arun_direct(pools, sql, params, rows)
        left = deadline - time.monotonic()
        # A slice that runs out puts the waiter back behind every later one (psycopg_pool
        # serves waiters in order): under a burst (a webhook of 200 senders) some would then
        # wait past the timeout. So slices only once a connect has failed; else one wait, in turn.
        wait = min(WAIT_SLICE_SECONDS, left) if pools.failed_at is not None else left
        try:
            conn = await pool.getconn(timeout=max(0.001, wait))
            break
        except PoolTimeout as err:
            if left <= wait:
                raise _store_error(err) from err
        except FAILURES as err:
            raise _store_error(err) from err
    try:
        if pools.local_timeout_ms:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL statement_timeout = {pools.local_timeout_ms}")
                result = await _aexecute(conn, sql, params, rows)
        else:
            result = await _aexecute(conn, sql, params, rows)
    except psycopg.Error as err:
        with anyio.CancelScope(shield=True):
            await pool.putconn(conn)
        if _disconnected(conn):
            pools.failed_at = time.monotonic()
            await pools.adrain()
            engine.dispose(close=False)
            raise _Disconnected(_describe(err)) from err
        if isinstance(err, CONFLICTS):
            raise _Conflict(_describe(err)) from err
        raise _store_error(err) from err
    except BaseException:
        # Cancelled (a timeout, a stop) or interrupted mid-statement: the connection's state
        # is unknown, so it is closed, never handed to the next caller. Shielded: inside a
        # cancelled scope every await raises again, and the pool would lose the slot for good.
        with anyio.CancelScope(shield=True):
            await conn.close()
            await pool.putconn(conn)
        raise
    with anyio.CancelScope(shield=True):  # a cancellation arriving now must not keep the slot either
        await pool.putconn(conn)
    return result


def _row_factory(rows: str) -> BaseRowFactory[Any]:
    """The rows of a statement: tuples for a scalar (its first column is returned), dicts by column name otherwise."""
    return tuple_row if rows == "scalar" else dict_row


def _execute(conn: psycopg.Connection, sql: str, params: dict[str, Any], rows: str) -> Any:
    with conn.cursor(row_factory=_row_factory(rows)) as cursor:
        cursor.execute(sql, params)
        return _fetch(cursor, rows)


async def _aexecute(conn: psycopg.AsyncConnection, sql: str, params: dict[str, Any], rows: str) -> Any:
    async with conn.cursor(row_factory=_row_factory(rows)) as cursor:
        await cursor.execute(sql, params)
        # rownumber is None when the statement returned no result set (cheaper than description).
        if cursor.rownumber is None:
            return [] if rows == "all" else None
        if rows == "all":
            return await cursor.fetchall()
        row = await cursor.fetchone()
        return row[0] if rows == "scalar" and row is not None else row


def _fetch(cursor: psycopg.Cursor[Any], rows: str) -> Any:
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


async def arun_batches(engine: Engine, sql: str, params: dict, *, batch_size: int, deadline: float | None) -> int:
    """run_batches as a coroutine, on the running loop's async pool."""
    total = 0
    while True:
        count = await arun(engine, sql, {**params, "batch": batch_size}, rows="scalar") or 0
        total += count
        if count < batch_size or (deadline is not None and time.monotonic() >= deadline):
            return total


def _describe(err: Exception) -> str:
    orig = getattr(err, "orig", None) or err
    return f"{type(orig).__name__}: {str(orig).strip().splitlines()[0] if str(orig).strip() else ''}"


class Database:
    """Holds the process's engine (app.core.db.Engine), created on first use."""

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
        """Close the sync pool and SQLAlchemy's connections (async pools: aclose, in their loop)."""
        if self._engine is not None:
            self._engine.dispose()

    async def aclose(self) -> None:
        """Close the running loop's async pool: an app's shutdown, in the loop that served it."""
        if self._engine is not None:
            await lock_pools(self._engine).aclose()

"""The one-statement path (`run`, `arun`, their batches), and where driver errors become StoreError.

Statements run on the handle's psycopg pools (app/core/engine.py, app/core/pools.py),
never through SQLAlchemy: a cold start pays only for psycopg.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
from collections.abc import Callable, Iterator
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

from app.core.engine import Engine, lock_pools
from app.core.placeholders import numbered
from app.core.pools import LockPools, utc_timestamps
from app.errors import StoreError, StoreUnavailable

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)


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


# The release of the current request's admission place (app/runtime.py: Admission sets it),
# None outside one. Called at each async statement: from its first one, a request waits on the
# database, not on the event loop, whichever route or channel it came through.
admission_release: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "admission_release", default=None
)


async def arun(
    engine: Engine,
    sql: str,
    params: dict[str, Any],
    *,
    rows: str = "first",
    read_only: bool = False,
    idempotent: bool = False,
    probe: bool = False,
) -> Any:
    """`run` as a coroutine, on the running loop's async pool: the request path's one-statement operations.

    The same shapes, errors and retry rule as `run`; no thread is held while the statement runs.
    idempotent: a write that may run once more after a disconnect, as a read does, because a second
    run finds what the first stored instead of storing it again (a claim with an idempotency key).
    probe: on the health check's own connection (`LockPools.async_pool`), not the turns' pool.
    """
    pools = lock_pools(engine)
    try:
        try:
            return await _arun_once(engine, pools, sql, params, rows, probe)
        except _Conflict as first:
            async for attempt in AsyncRetrying(**CONFLICT_RETRY):  # as in run: the first attempt was above
                with attempt:
                    if attempt.retry_state.attempt_number == 1:
                        raise first
                    return await _arun_once(engine, pools, sql, params, rows, probe)
            raise AssertionError("unreachable: tenacity returns or reraises") from None  # pragma: no cover
    except _Disconnected as err:
        if not (read_only or idempotent):
            raise
        logger.info("retrying a %s on a fresh connection after a disconnect: %s", "read" if read_only else "write", err)
        return await _arun_once(engine, pools, sql, params, rows, probe)


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


def _wait(pools: LockPools, left: float, *, burst: bool) -> float:
    # A slice that runs out puts the waiter back behind every later one (psycopg_pool serves
    # waiters in order): under a burst (a webhook of 200 senders, on the async path) some would
    # then wait past the timeout. So there slices only once a connect has failed; else one wait,
    # in turn. The sync path (admin routes, health, the CLI) sees no bursts and keeps its slices,
    # so a caller that arrives as the server goes down learns of it within a slice.
    sliced = not burst or pools.failed_at is not None
    return max(0.001, min(WAIT_SLICE_SECONDS, left) if sliced else left)


def _statement_error(conn: psycopg.Connection | psycopg.AsyncConnection, err: psycopg.Error) -> StoreError:
    """What a failed statement raises: _Disconnected (the caller drains the pools), _Conflict
    (retried once by run/arun), else StoreUnavailable / StoreError as `store_errors` maps it."""
    if _disconnected(conn):
        return _Disconnected(_describe(err))
    if isinstance(err, CONFLICTS):
        return _Conflict(_describe(err))
    return _store_error(err)


def _run_once(engine: Engine, pools: LockPools, sql: str, params: dict[str, Any], rows: str) -> Any:
    pool = pools.sync_pool()
    deadline = time.monotonic() + pools.config.timeout
    while True:
        if pools.outage(pool):
            return _run_direct(pools, sql, params, rows)
        left = deadline - time.monotonic()
        wait = _wait(pools, left, burst=False)
        try:
            conn = pool.getconn(timeout=wait)
            break
        except PoolTimeout as err:
            if left <= wait:
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
        failure = _statement_error(conn, err)
        if isinstance(failure, _Disconnected):
            pools.failed_at = time.monotonic()
            # What SQLAlchemy does on a disconnect: connections older than this one are not
            # trusted either. Lent ones finish their work and are closed on return.
            pools.drain()
            engine.dispose(close=False)
        raise failure from err
    except BaseException:
        conn.close()  # interrupted mid-statement: its state is unknown
        pool.putconn(conn)
        raise
    pool.putconn(conn)
    return result


async def _arun_once(
    engine: Engine, pools: LockPools, sql: str, params: dict[str, Any], rows: str, probe: bool = False
) -> Any:
    release = admission_release.get()
    if release is not None:
        release()  # idempotent: only the request's first statement gives its place back
    pool = await pools.async_pool(probe=probe)
    deadline = time.monotonic() + pools.config.timeout
    while True:
        if pools.outage(pool):
            return await _arun_direct(pools, sql, params, rows)
        left = deadline - time.monotonic()
        wait = _wait(pools, left, burst=True)
        try:
            with pools.waiting(pool) as waiting:
                conn = await pool.getconn(timeout=wait)
            if not waiting.cancelled_caught:
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
        failure = _statement_error(conn, err)
        if isinstance(failure, _Disconnected):
            pools.failed_at = time.monotonic()
            await pools.adrain()
            engine.dispose(close=False)
        raise failure from err
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


def _statement(sql: str, params: dict[str, Any]) -> tuple[str, dict[str, Any] | list[Any], bool]:
    """The text and parameters to send, and whether they go through psycopg's raw cursor
    (a long statement, converted once: app/core/placeholders.py)."""
    long = numbered(sql)
    return (sql, params, False) if long is None else (long.query, long.values(params), True)


def _execute(conn: psycopg.Connection, sql: str, params: dict[str, Any], rows: str) -> Any:
    text, values, raw = _statement(sql, params)
    factory = psycopg.RawCursor if raw else conn.cursor_factory
    with factory(conn, row_factory=_row_factory(rows)) as cursor:
        cursor.execute(text, values)
        return _fetch(cursor, rows)


async def _aexecute(conn: psycopg.AsyncConnection, sql: str, params: dict[str, Any], rows: str) -> Any:
    text, values, raw = _statement(sql, params)
    factory = psycopg.AsyncRawCursor if raw else conn.cursor_factory
    async with factory(conn, row_factory=_row_factory(rows)) as cursor:
        await cursor.execute(text, values)
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

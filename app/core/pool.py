"""The connections one-statement operations run on: detached from an engine, reused newest first.

SQLAlchemy's pool stays the engine's pool for migrations and multi-statement work
(the import). The lock operations draw from this one instead because its checkout
is a list pop: SQLAlchemy's checkout and checkin cost more than the statement's own
client time on a local socket (see BENCHMARKS.md, lock operations). psycopg_pool was
measured too and not chosen: it connects on a background thread, so while the server
is down every caller would wait out the pool timeout, and after a restart its backoff
delays the first reconnect; here a connect error reaches the caller at once.

Connections are made by the engine (`Engine.raw_connection()` then `detach()`), so its
connect arguments, `connect` listeners and first-connect schema check apply to them.
"""

from __future__ import annotations

import select
import threading
import time
from dataclasses import dataclass

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy.engine import Engine

from app.errors import StoreUnavailable


@dataclass(slots=True)
class Lent:
    """A connection out of the pool, with what the pool needs to know when it comes back."""

    connection: psycopg.Connection
    born: float  # time.monotonic() at connect
    generation: int


class ConnectionPool:
    """Idle psycopg connections of one engine, newest first, checked without a round trip.

    size: idle connections kept (0: every connection is closed after its statement,
    as NullPool does for serverless); limit: connections lent at once, 0 for no limit;
    timeout: seconds a caller waits for a free slot before StoreUnavailable; recycle:
    seconds after which an idle connection is replaced, None for never;
    local_timeout_ms: a statement timeout to set per transaction (poolers in
    transaction mode refuse it as a startup option), 0 for none; pre_ping: a round
    trip before reusing an idle connection (DB_PRE_PING).
    """

    def __init__(
        self, engine: Engine, *, size: int, limit: int, timeout: float, recycle: float | None,
        local_timeout_ms: int = 0, pre_ping: bool = False,
    ):
        self.engine = engine
        self.size = size
        self.timeout = timeout
        self.recycle = recycle
        self.local_timeout_ms = local_timeout_ms
        self.pre_ping = pre_ping
        self.limit = limit
        self._idle: list[Lent] = []
        self._lent = 0
        self._waiting = 0
        # One lock guards the idle list and the count of lent connections; callers wait
        # on its condition only when the limit is reached.
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._generation = 0

    @property
    def idle(self) -> int:
        """How many connections wait for reuse."""
        return len(self._idle)

    def get(self) -> Lent:
        """A live connection: the newest idle one that passes the checks, else a new one.

        Raises StoreUnavailable when none frees up within timeout; a connect error
        comes from the engine as SQLAlchemy raises it.
        """
        while True:
            with self._lock:
                if not self._idle and self.limit and self._lent >= self.limit:
                    self._wait_for_a_slot()
                lent = self._idle.pop() if self._idle else None
                self._lent += 1
            if lent is None:
                break
            if self._usable(lent):
                return lent
            lent.connection.close()
            self._release_slot()
        try:
            return self._connect()
        except BaseException:
            self._release_slot()
            raise

    def put(self, lent: Lent, *, discard: bool = False) -> None:
        """Take a connection back; it is closed if discarded, broken, mid-transaction or older than a discard_all."""
        conn = lent.connection
        keep = (
            not discard and not conn.closed and lent.generation == self._generation
            and conn.pgconn.transaction_status == TransactionStatus.IDLE
        )
        with self._lock:
            self._lent -= 1
            keep = keep and len(self._idle) < self.size and lent.generation == self._generation
            if keep:
                self._idle.append(lent)
            if self._waiting:
                self._freed.notify()
        if not keep:
            conn.close()

    def _release_slot(self) -> None:
        with self._lock:
            self._lent -= 1
            if self._waiting:
                self._freed.notify()

    def _wait_for_a_slot(self) -> None:
        # Called holding the lock; returns holding it, with an idle connection or a free slot.
        deadline = time.monotonic() + self.timeout
        self._waiting += 1
        try:
            while not self._idle and self._lent >= self.limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._freed.wait(remaining):
                    if not self._idle and self._lent >= self.limit:
                        raise StoreUnavailable(
                            f"PoolTimeout: no database connection free within {self.timeout:g} s"
                        )
        finally:
            self._waiting -= 1

    def discard_all(self) -> None:
        """Close every idle connection; those lent out now are closed when they come back."""
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        for lent in idle:
            lent.connection.close()

    def _connect(self) -> Lent:
        generation = self._generation
        fairy = self.engine.raw_connection()
        conn = fairy.driver_connection
        # Detached, the connection leaves SQLAlchemy's pool for good: this pool closes it.
        fairy.detach()
        return Lent(conn, time.monotonic(), generation)

    def _usable(self, lent: Lent) -> bool:
        conn = lent.connection
        if lent.generation != self._generation:
            return False
        if self.recycle is not None and time.monotonic() - lent.born > self.recycle:
            return False
        if server_closed(conn):
            return False
        if self.pre_ping:
            try:
                conn.execute("SELECT 1")
            except psycopg.Error:
                return False
        return True


def server_closed(conn: psycopg.Connection) -> bool:
    """Whether the server has closed an idle connection, learnt without a round trip."""
    if conn.closed or conn.broken:
        return True
    # An idle connection has nothing to read. If its socket is readable the server
    # has closed it (restart, pg_terminate_backend, idle timeout): replace it now,
    # for the cost of a poll() instead of a pre-ping round trip.
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)

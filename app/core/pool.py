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

import collections
import contextlib
import os
import select
import threading
import time
from dataclasses import dataclass
from typing import Any

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
    poller: Any  # select.poll() on the connection's socket, made once (None where poll() is missing)
    checkout: Any = None  # the SQLAlchemy checkout it came from, for an EngineCheckout


class _Waiter:
    """One caller waiting in get(): put() hands it a connection, or the slot of one it closed."""

    __slots__ = ("handed", "lent")

    def __init__(self) -> None:
        self.handed = threading.Event()
        self.lent: Lent | None = None

    def hand(self, lent: Lent | None) -> None:
        self.lent = lent
        self.handed.set()


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
        self._lent = 0  # connections out of the pool, or being made: never more than limit
        # Callers waiting for a connection, first come first served: a returned connection
        # (or its slot) goes straight to the longest waiter, so a busy thread that returns
        # and asks again cannot overtake it until it times out.
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._lock = threading.Lock()
        self._generation = 0
        self._pid = os.getpid()

    @property
    def idle(self) -> int:
        """How many connections wait for reuse."""
        return len(self._idle)

    @property
    def waiting(self) -> int:
        """How many callers wait in get() for a connection to come back (the limit is reached)."""
        return len(self._waiters)

    def get(self, timeout: float | None = None) -> Lent:
        """A live connection: the newest idle one that passes the checks, else a new one.

        Raises StoreUnavailable when none frees up within timeout seconds (the pool's
        by default); a connect error comes from the engine as SQLAlchemy raises it.
        Whatever interrupts it (even KeyboardInterrupt), the slot it took is given back.
        """
        self._forget_if_forked()
        waiter = None
        with self._lock:
            if self._idle:
                lent: Lent | None = self._idle.pop()
                self._lent += 1
            elif not self.limit or self._lent < self.limit:
                lent = None
                self._lent += 1
            else:
                waiter = _Waiter()
                self._waiters.append(waiter)
        if waiter is not None:
            lent = self._wait(waiter, self.timeout if timeout is None else timeout)
        try:
            # The slot is ours: a dead connection is closed and the next idle one tried in its place.
            while lent is not None:
                if self._usable(lent):
                    return lent
                dead, lent = lent, None
                dead.connection.close()
                with self._lock:
                    lent = self._idle.pop() if self._idle else None
            return self._connect()
        except BaseException:
            if lent is not None:
                lent.connection.close()
            self._release_slot()
            raise

    def put(self, lent: Lent, *, discard: bool = False) -> None:
        """Take a connection back; it is closed if discarded, broken, mid-transaction or older than a discard_all."""
        conn = lent.connection
        keep = (
            not discard and not conn.closed and self.size > 0
            and conn.pgconn.transaction_status == TransactionStatus.IDLE
        )
        if keep:
            with self._lock:
                if lent.generation == self._generation:
                    if self._waiters:
                        self._waiters.popleft().hand(lent)
                        return
                    if len(self._idle) < self.size:
                        self._lent -= 1
                        self._idle.append(lent)
                        return
        # Closed before its slot is given back, so the limit holds for open connections too.
        conn.close()
        self._release_slot()

    def discard_all(self) -> None:
        """Close every idle connection; those lent out now are closed when they come back."""
        if self._forget_if_forked():
            return
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        for lent in idle:
            lent.connection.close()

    def _release_slot(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().hand(None)
            else:
                self._lent -= 1

    def _wait(self, waiter: _Waiter, timeout: float) -> Lent | None:
        """A connection handed over by put() (None: its slot, to connect with); raises on timeout."""
        try:
            handed = waiter.handed.wait(timeout)
        except BaseException:
            # Interrupted: what it was handed meanwhile goes back.
            if not self._leave(waiter):
                if waiter.lent is not None:
                    self.put(waiter.lent, discard=True)
                else:
                    self._release_slot()
            raise
        if not handed and self._leave(waiter):
            raise StoreUnavailable(f"PoolTimeout: no database connection free within {timeout:g} s")
        return waiter.lent  # handed over, perhaps just as the wait timed out

    def _leave(self, waiter: _Waiter) -> bool:
        """Take waiter out of the queue unless put() has handed it something; True if it left."""
        with self._lock:
            if waiter.handed.is_set():
                return False
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            return True

    def _forget_if_forked(self) -> bool:
        # A forked child shares its parent's sockets: closing them would end the parent's
        # sessions (SQLAlchemy's dispose(close=False) after a fork leaves them alone too).
        if self._pid == os.getpid():
            return False
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._generation += 1
                self._idle, self._waiters, self._lent = [], collections.deque(), 0
        return True

    def _connect(self) -> Lent:
        generation = self._generation
        fairy = self.engine.raw_connection()
        conn = fairy.driver_connection
        # Detached, the connection leaves SQLAlchemy's pool for good: this pool closes it.
        fairy.detach()
        try:
            return Lent(conn, time.monotonic(), generation, socket_poller(conn))
        except BaseException:
            conn.close()
            raise

    def _usable(self, lent: Lent) -> bool:
        conn = lent.connection
        if lent.generation != self._generation:
            return False
        if self.recycle is not None and time.monotonic() - lent.born > self.recycle:
            return False
        if server_closed(conn, lent.poller):
            return False
        if self.pre_ping:
            try:
                conn.execute("SELECT 1")
                if not conn.autocommit:
                    conn.rollback()  # leave no transaction open behind the ping
            except psycopg.Error:
                return False
        return True


class EngineCheckout:
    """For an engine not made by make_engine: each statement checks a connection out of the engine's own pool.

    The engine's pool settings (size, overflow, recycle, pre-ping) hold as its owner
    set them; the cost is SQLAlchemy's checkout per statement.
    """

    local_timeout_ms = 0

    def __init__(self, engine: Engine):
        self.engine = engine

    def get(self, timeout: float | None = None) -> Lent:
        """A connection checked out of the engine's pool (its own timeout applies)."""
        checkout = self.engine.raw_connection()
        return Lent(checkout.driver_connection, 0.0, 0, None, checkout)

    def put(self, lent: Lent, *, discard: bool = False) -> None:
        """Return it to the engine's pool, or invalidate it there."""
        if discard:
            lent.checkout.invalidate()
        lent.checkout.close()

    def discard_all(self) -> None:
        """Nothing to do: the engine's dispose() empties its own pool."""


def server_closed(conn: psycopg.Connection, poller: Any = None) -> bool:
    """Whether the server has closed an idle connection, learnt without a round trip.

    poller: a socket_poller(conn) kept with the connection, to spare making one per check.
    """
    if conn.closed or conn.broken:
        return True
    # An idle connection has nothing to read. If its socket is readable the server
    # has closed it (restart, pg_terminate_backend, idle timeout): replace it now,
    # for the cost of a poll() instead of a pre-ping round trip.
    try:
        poller = poller or socket_poller(conn)
        if poller is not None:
            return bool(poller.poll(0))
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def socket_poller(conn: psycopg.Connection) -> Any:
    """A poll() object watching conn's socket for input; None where the platform has no poll()."""
    # poll(), not select(): select() refuses descriptors from 1024 up, which a busy server's sockets reach.
    if not hasattr(select, "poll"):
        return None
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    return poller

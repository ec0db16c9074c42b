"""The lock operations' connections: psycopg_pool's pools, one sync and one per event loop.

psycopg's own pool does the pooling (bounded size, idle shrink, lifetime with jitter,
a drain after a disconnect); this module only configures it the way the lock
operations need:

| piece          | what it does                                                                      |
|----------------|-----------------------------------------------------------------------------------|
| `has_input`    | the checkout check: a quiet idle connection passes on a poll(), no round trip      |
| `_configure`   | every new connection hands timestamps back in UTC, whatever the session TimeZone   |
| `LockPools`    | the pools of one engine: sync on first use, async per event loop on first use      |

DB_POOL=queue keeps DB_POOL_SIZE connections and opens up to twice that at once;
DB_POOL=null (serverless) uses psycopg_pool's null pools: a connection per statement,
closed on return. A pool is made on first use, never at import or engine creation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import anyio
import psycopg
from psycopg.types.datetime import TimestamptzBinaryLoader, TimestamptzLoader
from psycopg_pool import AsyncConnectionPool, AsyncNullConnectionPool, ConnectionPool, NullConnectionPool

from app.core import schema

logger = logging.getLogger(__name__)

UTC_ZONES = frozenset(
    {
        "UTC",
        "Etc/UTC",
        "Etc/UCT",
        "UCT",
        "Etc/Universal",
        "Universal",
        "Zulu",
        "Etc/Zulu",
        "GMT",
        "Etc/GMT",
        "Etc/GMT+0",
        "Etc/GMT-0",
        "Etc/Greenwich",
        "Greenwich",
        "GMT0",
    }
)
# Connections live at most this long (psycopg_pool adds up to 5% of jitter), idle extras this long.
MAX_LIFETIME_SECONDS = 1800.0
MAX_IDLE_SECONDS = 600.0


class _UtcTimestamptzLoader(TimestamptzLoader):
    # psycopg returns timestamptz in the session's TimeZone (a role or database may set
    # '+05:30'); the API promises UTC, so convert once here, for every statement.
    def load(self, data):
        return super().load(data).astimezone(UTC)


class _UtcTimestamptzBinaryLoader(TimestamptzBinaryLoader):
    def load(self, data):
        return super().load(data).astimezone(UTC)


def utc_timestamps(conn: Any) -> None:
    """Register the UTC loaders on conn unless its server already reports a UTC TimeZone."""
    info = getattr(conn, "info", None)
    zone = info.parameter_status("TimeZone") if info is not None else None
    if zone in UTC_ZONES:
        return  # psycopg's own (C) loader is right under UTC
    adapters = getattr(conn, "adapters", None)
    if adapters is not None:
        adapters.register_loader("timestamptz", _UtcTimestamptzLoader)
        adapters.register_loader("timestamptz", _UtcTimestamptzBinaryLoader)


def has_input(conn: psycopg.Connection | psycopg.AsyncConnection) -> bool:
    """Whether an idle connection's socket has something to read (or is gone), learnt without a round trip.

    An idle connection has nothing to read unless the server closed it (restart,
    pg_terminate_backend, idle timeout) or, under TLS 1.3, sent session tickets after
    the handshake. poll(), not select(): select() refuses descriptors from 1024 up,
    which a busy server's sockets reach.
    """
    if conn.closed or conn.broken:
        return True
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(conn.pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
            return bool(poller.poll(0))
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


# The checkout checks. A quiet socket passes for the cost of a poll(); one with input
# gets a ping, which fails on a closed connection (it is then replaced) and consumes
# what TLS left (so the next check is a poll again). DB_PRE_PING pings every time.
def _check(conn: psycopg.Connection) -> None:
    if has_input(conn):
        conn.execute("SELECT 1")


async def _acheck(conn: psycopg.AsyncConnection) -> None:
    if has_input(conn):
        await conn.execute("SELECT 1")


def _ping(conn: psycopg.Connection) -> None:
    conn.execute("SELECT 1")


async def _aping(conn: psycopg.AsyncConnection) -> None:
    await conn.execute("SELECT 1")


@dataclass
class PoolConfig:
    """How an engine's pools connect: libpq conninfo, connect kwargs and sizes (0: a null pool)."""

    conninfo: str
    kwargs: dict[str, Any]
    size: int
    timeout: float
    pre_ping: bool
    local_timeout_ms: int = 0


# Each kind of pool's name (psycopg_pool's logs and stats).
POOL_NAMES = {"sync": "lock-operations", "async": "lock-operations-async", "probe": "health-probe"}

# Every LockPools of the process, so that a loop that ends can close its pools (see close_loop_pools).
_ALL: weakref.WeakSet[LockPools] = weakref.WeakSet()


async def close_loop_pools() -> None:
    """Close every engine's async pool of the running loop: the last thing a loop does before it ends."""
    for pools in list(_ALL):
        await pools.aclose()


@dataclass(eq=False)
class LockPools:
    """An engine's psycopg pools: one sync pool, and per running event loop an async pool and the
    health check's (`async_pool(probe=True)`).

    An async pool belongs to the loop that opened it (its workers are that loop's
    tasks); a process normally has one loop, tests and the CLI may have several.
    """

    config: PoolConfig
    _sync: ConnectionPool | None = None
    _async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    # Per loop, the health check's own connection (at most one): it never queues behind a burst's turns.
    _probe: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _schema_read: bool = False
    # Per async pool, the scopes of the statements waiting for one of its connections (`waiting`).
    _waiters: dict[AsyncConnectionPool, set[anyio.CancelScope]] = field(default_factory=dict)
    # When the last connect failed or a connection broke mid-statement (None after a
    # connect succeeds). psycopg_pool lets a caller wait its whole timeout for a
    # connection while the server is down; during an outage `outage()` lets `run`
    # connect directly instead, so a request fails fast and the first one after the
    # recovery gets through at once.
    failed_at: float | None = None

    def __post_init__(self) -> None:
        _ALL.add(self)

    def _connect_failed(self, pool: ConnectionPool | AsyncConnectionPool) -> None:
        """psycopg_pool's reconnect_failed: a connect of pool failed (in its worker: for an async
        pool, on its loop). When that leaves pool with no connection, none in use nor being
        made, its waiters are woken: nothing they wait for is coming, and psycopg_pool would let
        them wait out DB_POOL_TIMEOUT. They then connect by themselves (`outage`)."""
        self.failed_at = time.monotonic()
        waiters = self._waiters.get(pool) if isinstance(pool, AsyncConnectionPool) else None
        if waiters and pool.get_stats().get("pool_size", 0) == 0:
            for scope in list(waiters):
                scope.cancel()

    @contextlib.contextmanager
    def waiting(self, pool: AsyncConnectionPool) -> Iterator[anyio.CancelScope]:
        """Around one wait for a connection of pool: the scope is cancelled when the pool fails to
        connect and has no connection left (`_connect_failed`); the caller sees `cancelled_caught`
        and looks again, instead of waiting out DB_POOL_TIMEOUT for nothing."""
        scope = anyio.CancelScope()
        waiters = self._waiters.setdefault(pool, set())
        waiters.add(scope)
        try:
            with scope:
                yield scope
        finally:
            waiters.discard(scope)
            if not waiters and self._waiters.get(pool) is waiters:
                del self._waiters[pool]

    def outage(self, pool: ConnectionPool | AsyncConnectionPool) -> bool:
        """Whether the server looked down at the last try and pool (the one the caller is about to
        wait on) has no idle connection to reuse.

        Only that pool's idle connections count: one idle in another pool (the health check's,
        the sync pool) cannot serve the caller, who would wait out DB_POOL_TIMEOUT for nothing.
        """
        return self.failed_at is not None and pool.get_stats().get("pool_available", 0) == 0

    def connect_kwargs(self) -> dict[str, Any]:
        """What a direct connection during an outage is made with (the pools' own connect arguments)."""
        return {"autocommit": True, **self.config.kwargs}

    def _configure(self, conn: psycopg.Connection) -> None:
        self.failed_at = None
        utc_timestamps(conn)
        if not self._schema_read:
            self._schema_read = True
            schema.on_first_connect(conn, None)

    async def _aconfigure(self, conn: psycopg.AsyncConnection) -> None:
        self.failed_at = None
        utc_timestamps(conn)
        if not self._schema_read:
            # Once per engine: say in the log when the schema is behind the code.
            self._schema_read = True
            try:
                cursor = await conn.execute(schema.REVISION)
                row = await cursor.fetchone()
                revision = row[0] if row else None
            except psycopg.Error:  # no alembic_version table: never migrated
                revision = None
            # Reading the migration scripts touches files: not on the loop.
            await anyio.to_thread.run_sync(schema.report, revision)

    @property
    def local_timeout_ms(self) -> int:
        return self.config.local_timeout_ms

    def sync_pool(self) -> ConnectionPool:
        """The sync pool, opened on first use (connections are made on demand)."""
        pool = self._sync
        if pool is None:
            with self._lock:
                if self._sync is None:
                    self._sync = self._make_sync()
                pool = self._sync
        return pool

    def _pool_args(self, *, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The keyword arguments of each kind of pool ("sync", "async" or "probe", the health check's):
        those every pool takes, and those only a sized (not a null) pool takes."""
        c = self.config
        sync = kind == "sync"
        common: dict[str, Any] = {
            "kwargs": {"autocommit": True, **c.kwargs},
            "timeout": c.timeout,
            "configure": self._configure if sync else self._aconfigure,
            "check": (_ping if sync else _aping) if c.pre_ping else (_check if sync else _acheck),
            "name": POOL_NAMES[kind],
            # One connect attempt per need: a failure is reported at once, not retried in the background.
            "reconnect_timeout": 0,
            "reconnect_failed": self._connect_failed,
        }
        sized = {
            "min_size": 0,
            "max_size": 1 if kind == "probe" else 2 * c.size,
            "max_lifetime": MAX_LIFETIME_SECONDS,
            "max_idle": MAX_IDLE_SECONDS,
        }
        return common, sized

    def _make_sync(self) -> ConnectionPool:
        common, sized = self._pool_args(kind="sync")
        if not self.config.size:
            return NullConnectionPool(self.config.conninfo, max_size=None, open=True, **common)
        return ConnectionPool(self.config.conninfo, open=True, **sized, **common)

    async def async_pool(self, *, probe: bool = False) -> AsyncConnectionPool:
        """The running loop's async pool, opened on first use in that loop.

        probe: the health check's pool instead, of one connection. The turns' pool hands its
        connections out in request order, so during a burst of a thousand claims a health
        check waited behind all of them; on its own connection it waits for none.
        """
        loop = asyncio.get_running_loop()
        pools = self._probe if probe else self._async
        pool = pools.get(loop)
        if pool is None:
            common, sized = self._pool_args(kind="probe" if probe else "async")
            if not self.config.size:
                pool = AsyncNullConnectionPool(self.config.conninfo, max_size=None, open=False, **common)
            else:
                pool = AsyncConnectionPool(self.config.conninfo, open=False, **sized, **common)
            pools[loop] = pool  # set before the first await: one pool per loop
        if pool.closed:
            await pool.open()
        return pool

    def drain(self) -> None:
        """After a disconnect: connections made before it are not trusted (sync pool; async: adrain)."""
        if self._sync is not None:
            self._sync.drain()

    async def adrain(self) -> None:
        loop = asyncio.get_running_loop()
        for pool in (self._async.get(loop), self._probe.get(loop)):
            if pool is not None:
                await pool.drain()
        self.drain()

    async def aclose(self) -> None:
        """Close the running loop's async pool (an app's shutdown, in its own loop)."""
        loop = asyncio.get_running_loop()
        for pool in (self._async.pop(loop, None), self._probe.pop(loop, None)):
            if pool is not None:
                await pool.close()

    def close(self) -> None:
        """Close the sync pool; async pools of loops that are gone are left to be collected."""
        with self._lock:
            pool, self._sync = self._sync, None
        if pool is not None:
            pool.close()

    def owns(self, pool: object) -> bool:
        """Whether pool is one of these pools (the sync one or a loop's async one)."""
        return pool is self._sync or any(pool is mine for mine in [*self._async.values(), *self._probe.values()])

    def idle(self) -> int:
        """Connections waiting for reuse, in the sync pool and every loop's async pools."""
        pools: list[ConnectionPool | AsyncConnectionPool] = [*self._async.values(), *self._probe.values()]
        if self._sync is not None:
            pools.append(self._sync)
        return sum(pool.get_stats().get("pool_available", 0) for pool in pools)

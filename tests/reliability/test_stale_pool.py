"""Pooled connections a middlebox forgot (no FIN; a reset on the next packet) cost at most one request, and
an outage costs the wait for a pooled connection at most once."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import psycopg
import pytest
from psycopg_pool import PoolTimeout

from app.core.db import arun
from app.core.engine import lock_pools, make_engine
from app.errors import StoreUnavailable
from app.ledger import Ledger
from app.sessions import SessionService
from app.streams import signals
from tests.conftest import make_settings
from tests.utils import aio
from tests.utils.agents import wait_for
from tests.utils.apps import app_client
from tests.utils.proxy import OutageProxy, outage_proxy

DEVICE = "5e0c2a1b-7d3f-4b6a-9c8e-2f1a0b3c4d5e"
POOLED = 3


@pytest.fixture
def proxy(database_url: str, engine) -> Iterator[OutageProxy]:  # engine: a truncated database
    with outage_proxy(database_url) as proxy:
        yield proxy


async def fill_async_pool(engine, count: int = POOLED) -> None:
    """fill_pool for the running loop's async pool: the one the app's routes use."""
    pool = await lock_pools(engine).async_pool()
    held = [await pool.getconn() for _ in range(count)]
    for conn in held:
        await pool.putconn(conn)
    assert pool.get_stats()["pool_available"] == count


def fill_pool(engine, count: int = POOLED) -> None:
    """Open count connections at once and return them all to the lock operations' pool, idle."""
    pool = lock_pools(engine).sync_pool()
    held = [pool.getconn() for _ in range(count)]
    for conn in held:
        pool.putconn(conn)
    assert pool.get_stats()["pool_available"] == count


def test_one_disconnect_invalidates_the_older_pooled_connections(proxy: OutageProxy):
    settings = make_settings(proxy.url, db_pool="queue", db_pool_size=POOLED)
    with app_client(settings) as client:
        engine = client.services.database.engine
        assert wait_for(lambda: client.services.runtime.streams.listening), "the listener never connected"
        client.portal.call(fill_async_pool, engine)  # on the app's own loop
        assert proxy.drop_silently() == POOLED + 1  # and the listener's connection
        replies = [
            client.post("/api/chat", json={"message": text}, headers={"X-Device-ID": DEVICE}).json()
            for text in ("hi", "book", "monday", "3pm")
        ]
    # The first claim is a write on a forgotten connection: it is not retried, so that
    # request degrades; the disconnect retires the other two stale connections unused.
    assert [reply["degraded"] for reply in replies] == [True, False, False, False]
    assert replies[-1]["agent"] == "scheduling"


def test_a_read_is_retried_once_on_a_fresh_connection(proxy: OutageProxy, engine):
    SessionService(engine).set_session_lock(DEVICE, "billing")
    stale = make_engine(make_settings(proxy.url, db_pool="queue", db_pool_size=1))
    try:
        fill_pool(stale, 1)
        assert proxy.drop_silently() == 1
        assert SessionService(stale).get_session_lock(DEVICE) == "billing"
    finally:
        stale.dispose()


def test_a_write_is_not_retried(proxy: OutageProxy, engine):
    stale = make_engine(make_settings(proxy.url, db_pool="queue", db_pool_size=1))
    try:
        fill_pool(stale, 1)
        assert proxy.drop_silently() == 1
        with pytest.raises(StoreUnavailable):
            SessionService(stale).set_session_lock(DEVICE, "billing")
        # The next call gets a fresh connection.
        assert SessionService(stale).set_session_lock(DEVICE, "billing") is True
    finally:
        stale.dispose()


def test_a_claim_with_an_idempotency_key_is_retried_on_a_fresh_connection_and_one_without_is_not(
    proxy: OutageProxy, engine
):
    # A NAT that forgot the connection: the claim never reached the server. Retried, the message is
    # stored and answered (no degraded reply that starts the conversation over); a claim that was
    # applied would be found by its key, not stored again. Without a key a retry could store it twice.
    stale = make_engine(make_settings(proxy.url, db_pool="queue", db_pool_size=1))
    ledger = Ledger(stale, lease_seconds=30, default_ttl=86400, context_cap=20)
    try:
        aio.run(fill_async_pool, stale, 1)
        assert proxy.drop_silently() == 1
        claim = aio.run(ledger.claim, "default", DEVICE, "tomorrow", external_id="ui-message-1", metadata={})
        assert claim.message_id is not None and claim.lease is not None
        aio.run(fill_async_pool, stale, 1)
        assert proxy.drop_silently() >= 1  # every connection of the pool (a drain may have made one more)
        with pytest.raises(StoreUnavailable):
            aio.run(ledger.claim, "default", DEVICE, "10am", external_id=None, metadata={})
        rows = scalar_rows(engine, "SELECT content FROM conversation_messages ORDER BY id")
        assert rows == [("tomorrow",)]
    finally:
        aio.close_pools(stale)
        stale.dispose()


def scalar_rows(engine, sql: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.exec_driver_sql(sql).all()]


def cause_of_failure(engine) -> Callable[[], Awaitable[BaseException | None]]:
    """A coroutine function: one statement on engine's turns' pool, and what its StoreUnavailable came from."""

    async def failure() -> BaseException | None:
        try:
            await arun(engine, "SELECT 1 AS one", {})
        except StoreUnavailable as err:
            return err.__cause__
        return None

    return failure


def refused(cause: BaseException | None) -> bool:
    """Whether a statement failed on a refused connect, not on the wait for a pooled one (PoolTimeout is an
    OperationalError too)."""
    return isinstance(cause, psycopg.OperationalError) and not isinstance(cause, PoolTimeout)


def test_in_an_outage_no_statement_waits_out_the_pool_timeout_though_the_health_check_keeps_an_idle_connection(
    proxy: OutageProxy,
):
    # DB_POOL_TIMEOUT is what a statement could wait for a pooled connection: none comes in an outage.
    down = make_engine(make_settings(proxy.url, db_pool="queue", db_pool_timeout=30, db_connect_timeout=2))
    failure = cause_of_failure(down)

    async def at_once(count: int) -> list[BaseException | None]:
        causes: list[BaseException | None] = []

        async def one() -> None:
            causes.append(await failure())

        async with anyio.create_task_group() as group:
            for _ in range(count):
                group.start_soon(one)
        return causes

    try:
        assert aio.run(arun, down, "SELECT 1 AS one", {}, probe=True) == {"one": 1}  # the check keeps its connection
        proxy.down()
        # The first statements of the outage wait for the pool to connect; its failed connect wakes them,
        # and each connects by itself and is refused.
        assert all(refused(cause) for cause in aio.run(at_once, 5)), "a waiter was left to the pool's timeout"
        # From then on a statement connects by itself at once: the health check's idle (and dead)
        # connection, in a pool of its own, could never have served it.
        assert refused(aio.run(failure))
    finally:
        aio.close_pools(down)
        down.dispose()


def test_a_failed_connect_does_not_wake_waiters_while_the_pool_still_has_a_connection_to_hand_back(
    proxy: OutageProxy, monkeypatch
):
    # A burst at max_connections: a new connection is refused, but the ones in use come back.
    busy = make_engine(make_settings(proxy.url, db_pool="queue", db_pool_size=1, db_pool_timeout=30))
    pools = lock_pools(busy)
    connect_failed = pools._connect_failed

    async def burst() -> Any:
        refused = anyio.Event()

        def seen(pool: Any) -> None:  # the pools' reconnect_failed, on the loop
            connect_failed(pool)
            refused.set()

        monkeypatch.setattr(pools, "_connect_failed", seen)  # before the pool that calls it is made
        pool = await pools.async_pool()
        held = await pool.getconn()
        proxy.refuse_new()
        async with anyio.create_task_group() as group:
            answers: list[Any] = []

            async def statement() -> None:
                answers.append(await arun(busy, "SELECT 1 AS one", {}))

            group.start_soon(statement)
            with anyio.fail_after(20):
                await refused.wait()  # the growth of the pool for the waiter was refused
            await pool.putconn(held)  # the waiter gets this one
        return answers

    try:
        assert aio.run(burst) == [{"one": 1}]
    finally:
        aio.close_pools(busy)
        busy.dispose()


def test_connections_carry_tcp_keepalives_from_settings(proxy: OutageProxy):
    # Through the proxy: always TCP, even where the test database is reached over a Unix socket.
    settings = make_settings(proxy.url, db_keepalives_idle=42, db_keepalives_interval=7, db_keepalives_count=4)
    engine = make_engine(settings)
    try:
        fairy = engine.raw_connection()
        try:
            sock = socket.socket(fileno=fairy.dbapi_connection.pgconn.socket)  # a second handle on the same socket
            try:
                options = (
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                )
            finally:
                sock.detach()  # leave the connection's socket open
        finally:
            fairy.close()
    finally:
        engine.dispose()
    assert options[0] != 0 and options[1:] == (42, 7, 4)


def listener_pid(database_url: str) -> int | None:
    conninfo = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN agent_sessions_%'").fetchone()
    return row[0] if row else None


def test_the_listener_finds_its_connection_dropped_silently_and_listens_again(proxy, database_url, monkeypatch):
    monkeypatch.setattr(signals, "PING_SECONDS", 0.1)  # a ping after 0.1 s without a notification
    with app_client(make_settings(proxy.url)) as client:
        assert wait_for(lambda: client.services.runtime.streams.listening and listener_pid(database_url))
        first = listener_pid(database_url)
        assert proxy.drop_silently() >= 1
        # Told nothing, the listener learns of the drop by its ping, and listens again on a new connection.
        assert wait_for(lambda: listener_pid(database_url) not in (None, first)), "the listener never came back"
        assert wait_for(lambda: client.services.runtime.streams.listening)

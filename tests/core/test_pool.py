"""The lock operations' ConnectionPool against real PostgreSQL: reuse, bounds, retirement, outages."""

from __future__ import annotations

import gc
import os
import resource
import threading
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from app.core.config import Settings
from app.core.db import connection_pool, make_engine, run
from app.core.pool import ConnectionPool, Lent
from app.errors import StoreError, StoreUnavailable
from app.sessions import SessionService
from tests.conftest import make_settings
from tests.utils.agents import wait_for
from tests.utils.counting import count_statements

APP = "agent-sessions"


def direct_settings(url: str, **overrides) -> Settings:
    """Settings straight to PostgreSQL, whichever backend group pytest is running."""
    return make_settings(url, db_pooler="none", **overrides)


@pytest.fixture
def direct_engine(direct_url: str) -> Iterator[Engine]:
    """An engine from make_engine straight to PostgreSQL (pool size 5, limit 10), disposed afterwards."""
    engine = make_engine(direct_settings(direct_url))
    yield engine
    engine.dispose()


@pytest.fixture
def make_pool(direct_engine: Engine) -> Iterator[Callable[..., ConnectionPool]]:
    """ConnectionPool(direct_engine, ...) with test defaults; every pool made is emptied afterwards."""
    pools: list[ConnectionPool] = []

    def make(**options) -> ConnectionPool:
        values = {"size": 2, "limit": 0, "timeout": 5.0, "recycle": None} | options
        pool = ConnectionPool(direct_engine, **values)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.discard_all()


@pytest.fixture
def observer(direct_url: str) -> Iterator[sa.Connection]:
    """A connection of its own (not the app's application_name) to watch and kill the app's backends."""
    engine = sa.create_engine(
        direct_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT",
        connect_args={"application_name": "pool-test-observer"},
    )
    with engine.connect() as conn:
        yield conn
    engine.dispose()


def app_pids(observer: sa.Connection) -> set[int]:
    """Backend pids of the app's connections to the test database."""
    return set(observer.exec_driver_sql(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %(app)s AND datname = current_database()",
        {"app": APP},
    ).scalars())


def terminate(observer: sa.Connection, pid: int) -> None:
    """pg_terminate_backend(pid), as a DBA or a failover would; returns once the backend has exited."""
    assert observer.exec_driver_sql("SELECT pg_terminate_backend(%(pid)s)", {"pid": pid}).scalar() is True
    # An exited backend has closed its socket: the client's side of it is readable from then on.
    assert wait_for(lambda: pid not in app_pids(observer), seconds=10)


def works(lent: Lent) -> bool:
    """Whether the lent connection answers a statement."""
    return lent.connection.execute("SELECT 1").fetchone() == (1,)


class TestReuse:
    def test_get_put_get_returns_the_same_connection(self, make_pool):
        pool = make_pool()
        first = pool.get()
        pool.put(first)
        assert pool.idle == 1
        again = pool.get()
        assert again.connection is first.connection
        assert works(again)
        pool.put(again)

    def test_newest_returned_comes_back_first(self, make_pool):
        pool = make_pool(size=2)
        a, b = pool.get(), pool.get()
        assert a.connection is not b.connection
        pool.put(a)
        pool.put(b)
        newest, older = pool.get(), pool.get()
        assert (newest.connection, older.connection) == (b.connection, a.connection)
        pool.put(newest)
        pool.put(older)


class TestSize:
    def test_size_zero_closes_every_connection_on_return(self, make_pool):
        pool = make_pool(size=0)
        first = pool.get()
        assert works(first)
        pool.put(first)
        assert first.connection.closed and pool.idle == 0
        second = pool.get()
        assert second.connection is not first.connection and works(second)
        pool.put(second)
        assert second.connection.closed

    def test_size_bounds_the_idle_connections(self, make_pool):
        pool = make_pool(size=2)
        held = [pool.get() for _ in range(3)]
        for lent in held:
            pool.put(lent)
        assert pool.idle == 2
        # The two returned first are kept; the one beyond size is closed.
        assert [lent.connection.closed for lent in held] == [False, False, True]


def queue_a_waiter(pool: ConnectionPool) -> tuple[threading.Thread, list[Lent]]:
    """Start a thread whose pool.get() waits (the limit is reached); return it and the list its connection lands in."""
    got: list[Lent] = []
    waiter = threading.Thread(target=lambda: got.append(pool.get()))
    waiter.start()
    assert wait_for(lambda: pool.waiting == 1, seconds=10)
    return waiter, got


class TestLimit:
    def test_a_caller_waits_for_the_connection_put_back(self, make_pool):
        pool = make_pool(size=1, limit=1, timeout=30)
        first = pool.get()
        waiter, got = queue_a_waiter(pool)
        assert got == []  # still waiting: the only slot is lent
        pool.put(first)
        waiter.join(10)
        assert not waiter.is_alive()
        assert got[0].connection is first.connection
        assert pool.waiting == 0
        pool.put(got[0])

    def test_a_waiter_gets_a_new_connection_when_the_returned_one_is_closed(self, make_pool):
        pool = make_pool(size=0, limit=1, timeout=30)
        first = pool.get()
        waiter, got = queue_a_waiter(pool)
        pool.put(first)  # size 0: closed, yet its slot is free
        waiter.join(10)
        assert not waiter.is_alive()
        assert first.connection.closed
        assert got[0].connection is not first.connection and works(got[0])
        pool.put(got[0])

    def test_a_returned_connection_goes_to_the_longest_waiter_not_to_the_next_caller(self, make_pool):
        """First come, first served: the thread that returns a connection and asks again cannot overtake a waiter."""
        pool = make_pool(size=1, limit=1, timeout=30)
        first = pool.get()
        waiter, got = queue_a_waiter(pool)
        pool.put(first)
        with pytest.raises(StoreUnavailable, match="PoolTimeout"):
            pool.get(timeout=0.2)  # the connection was handed to the waiter, not left for this caller
        waiter.join(10)
        assert got[0].connection is first.connection
        pool.put(got[0])

    def test_timeout_raises_pool_timeout_and_leaks_no_slot(self, make_pool):
        # size 0: every get after a put needs a free slot, not an idle connection.
        pool = make_pool(size=0, limit=1, timeout=0.2)
        first = pool.get()
        for _ in range(2):
            with pytest.raises(StoreUnavailable, match="PoolTimeout"):
                pool.get()
        assert pool.waiting == 0
        pool.put(first)
        for _ in range(2):
            fresh = pool.get()  # the timed-out callers hold no slot
            assert works(fresh)
            pool.put(fresh)


class TestRetirement:
    def test_discard_all_closes_idle_and_lent_connections(self, make_pool):
        pool = make_pool(size=2)
        idle = [pool.get(), pool.get()]
        lent = pool.get()
        for each in idle:
            pool.put(each)
        pool.discard_all()
        assert pool.idle == 0
        assert all(each.connection.closed for each in idle)
        assert works(lent)  # a connection in use finishes its work...
        pool.put(lent)
        assert lent.connection.closed and pool.idle == 0  # ...and is closed on return
        fresh = pool.get()
        assert fresh.connection not in {each.connection for each in [*idle, lent]}
        assert works(fresh)
        pool.put(fresh)
        assert pool.idle == 1  # connections made after the discard are kept again

    def test_recycle_replaces_an_idle_connection(self, make_pool):
        pool = make_pool(size=1, recycle=0)
        first = pool.get()
        pool.put(first)
        second = pool.get()
        assert second.connection is not first.connection
        assert first.connection.closed and works(second)
        pool.put(second)

    @pytest.mark.parametrize("failed", [False, True], ids=["open", "failed"])
    def test_a_connection_returned_in_a_transaction_is_closed(self, make_pool, failed):
        pool = make_pool(size=1)
        lent = pool.get()
        lent.connection.execute("BEGIN")
        if failed:
            with pytest.raises(psycopg.Error):
                lent.connection.execute("SELECT 1/0")
        pool.put(lent)
        assert lent.connection.closed and pool.idle == 0
        fresh = pool.get()
        assert fresh.connection is not lent.connection
        assert fresh.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        pool.put(fresh)


class TestLifetime:
    def test_an_engine_dropped_without_dispose_is_collected_with_its_connections(self, direct_url, observer):
        engine = make_engine(direct_settings(direct_url))
        assert run(engine, "SELECT 1", {}, rows="scalar") == 1
        lent = connection_pool(engine).get()
        pid = lent.connection.info.backend_pid
        connection_pool(engine).put(lent)
        assert pid in app_pids(observer)
        gone = weakref.ref(engine)
        del engine, lent
        with warnings.catch_warnings():
            # psycopg says so when the garbage collector closes a connection left open.
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        assert gone() is None
        assert wait_for(lambda: pid not in app_pids(observer), seconds=10)


class TestServerClosed:
    def test_a_terminated_connection_is_never_handed_out(self, make_pool, observer):
        pool = make_pool(size=1)
        lent = pool.get()
        pid = lent.connection.info.backend_pid
        pool.put(lent)
        terminate(observer, pid)
        fresh = pool.get()
        assert fresh.connection is not lent.connection
        assert fresh.connection.info.backend_pid != pid
        assert works(fresh)
        assert lent.connection.closed
        pool.put(fresh)

    def test_sessions_run_on_after_their_connections_are_terminated(self, direct_engine, observer):
        pool = connection_pool(direct_engine)
        sessions = SessionService(direct_engine)
        device = f"killed-{uuid.uuid4().hex[:8]}"
        held = [pool.get() for _ in range(2)]
        for lent in held:
            pool.put(lent)
        assert pool.idle == 2
        for lent in held:
            terminate(observer, lent.connection.info.backend_pid)
        # Writes are never retried: each would fail if it were given a dead connection.
        assert sessions.set_session_lock(device, "billing") is True
        assert sessions.handoff_session_lock(device, "billing", "scheduling") is True
        assert sessions.get_session_lock(device) == "scheduling"
        assert all(lent.connection.closed for lent in held)

    def test_a_socket_numbered_above_select_range_is_still_reused(self, make_pool):
        """select() refuses descriptors from FD_SETSIZE (1024) up; a busy server has such sockets."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 1200
        if soft < wanted:
            if hard != resource.RLIM_INFINITY and hard < wanted:
                pytest.skip(f"the open-files limit ({hard}) is below {wanted}: cannot open a socket above 1023")
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        filler = []
        try:
            while not filler or filler[-1] < 1030:
                filler.append(os.open(os.devnull, os.O_RDONLY))
            pool = make_pool(size=1)
            first = pool.get()
            assert first.connection.pgconn.socket >= 1024
            pool.put(first)
            again = pool.get()
            assert again.connection is first.connection and works(again)
            pool.put(again)
        finally:
            for fd in filler:
                os.close(fd)
            if soft < wanted:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class TestStatementErrors:
    def test_a_refused_statement_keeps_the_connection(self, direct_engine):
        pool = connection_pool(direct_engine)
        sessions = SessionService(direct_engine)
        device = f"refused-{uuid.uuid4().hex[:8]}"
        sessions.set_session_lock(device, "billing", ttl=600)
        held = [pool.get() for _ in range(2)]
        for lent in held:
            pool.put(lent)
        kept = {lent.connection for lent in held}
        with pytest.raises(StoreError, match="CheckViolation") as caught:
            run(direct_engine, "UPDATE conversation_states SET session_ttl = 0 WHERE device_id = %(d)s", {"d": device})
        assert not isinstance(caught.value, StoreUnavailable)
        with pytest.raises(StoreError, match="SyntaxError") as caught:
            run(direct_engine, "SELEC 1", {})
        assert not isinstance(caught.value, StoreUnavailable)
        assert pool.idle == 2
        again = [pool.get() for _ in range(2)]
        assert {lent.connection for lent in again} == kept
        for lent in again:
            pool.put(lent)
        assert sessions.get_session_lock(device) == "billing"

    @pytest.fixture
    def sequence(self, observer: sa.Connection) -> Iterator[str]:
        """A sequence (not rolled back with a killed transaction) that counts the runs of a statement."""
        name = f"pool_test_{uuid.uuid4().hex[:8]}"
        observer.exec_driver_sql(f"CREATE SEQUENCE {name}")
        yield name
        observer.exec_driver_sql(f"DROP SEQUENCE {name}")

    @staticmethod
    def dies_once(sequence: str) -> str:
        # The first run terminates its own backend mid-statement; a second run returns true.
        return (f"SELECT CASE WHEN nextval('{sequence}') = 1 "
                "THEN pg_terminate_backend(pg_backend_pid()) ELSE true END")

    def test_a_disconnect_discards_every_idle_connection_and_a_write_is_not_retried(
        self, direct_engine, sequence, observer
    ):
        pool = connection_pool(direct_engine)
        held = [pool.get() for _ in range(3)]
        for lent in held:
            pool.put(lent)
        assert pool.idle == 3
        with pytest.raises(StoreUnavailable):
            run(direct_engine, self.dies_once(sequence), {}, rows="scalar")
        assert pool.idle == 0
        assert all(lent.connection.closed for lent in held)
        assert observer.exec_driver_sql(f"SELECT last_value FROM {sequence}").scalar() == 1
        assert run(direct_engine, "SELECT 1", {}, rows="scalar") == 1

    def test_a_read_is_retried_once_after_a_disconnect(self, direct_engine, sequence, observer):
        assert run(direct_engine, self.dies_once(sequence), {}, rows="scalar", read_only=True) is True
        assert observer.exec_driver_sql(f"SELECT last_value FROM {sequence}").scalar() == 2


class TestPrePing:
    @pytest.mark.parametrize("pre_ping", [True, False])
    def test_a_reused_connection_is_pinged_only_with_pre_ping(self, direct_engine, make_pool, pre_ping):
        pool = make_pool(size=1, pre_ping=pre_ping)
        with count_statements(direct_engine) as statements:
            pool.put(pool.get())
            assert statements == []  # a new connection is not pinged
            reused = pool.get()
            pool.put(reused)
        assert statements == (["SELECT 1"] if pre_ping else [])

    @pytest.mark.parametrize("pre_ping", [True, False])
    def test_db_pre_ping_reaches_the_lock_operations(self, direct_url, pre_ping):
        engine = make_engine(direct_settings(direct_url, db_pre_ping=pre_ping))
        sessions = SessionService(engine)
        try:
            with count_statements(engine) as statements:
                sessions.get_session_lock("pre-ping")
                statements.clear()
                sessions.get_session_lock("pre-ping")
            assert statements[:-1] == (["SELECT 1"] if pre_ping else [])
            assert "conversation_states" in statements[-1]
        finally:
            engine.dispose()


class TestConcurrency:
    THREADS = 16
    OPS = 200

    def test_threads_share_a_small_pool_within_its_limit(self, direct_url, observer):
        """16 threads x 200 lock operations on pool size 2, limit 4."""
        engine = make_engine(direct_settings(direct_url, db_pool_size=2))
        made: list = []  # every psycopg connection the engine opens, seen from the client side
        sa.event.listen(engine, "connect", lambda dbapi_conn, record: made.append(dbapi_conn))
        pool = connection_pool(engine)
        assert (pool.size, pool.limit) == (2, 4)
        sessions = SessionService(engine)
        run_id = uuid.uuid4().hex[:8]
        errors: list[BaseException] = []
        done = threading.Event()
        seen: list[int] = []

        def sample() -> None:
            # close() marks a connection closed at once, so this count is exact; the server's
            # pg_stat_activity would still list a backend that is on its way out.
            while not done.wait(0.0005):  # pacing only, so the sampler does not hog the GIL
                seen.append(sum(1 for conn in list(made) if not conn.closed))

        def worker(index: int) -> None:
            device = f"conc-{run_id}-{index}"
            holder = None
            try:
                for step in range(self.OPS):
                    match step % 5:
                        case 0:
                            holder = f"a{step}"
                            assert sessions.set_session_lock(device, holder) is True
                        case 1:
                            assert sessions.get_session_lock(device) == holder
                        case 2:
                            assert sessions.handoff_session_lock(device, holder, f"b{step}") is True
                            holder = f"b{step}"
                        case 3:
                            assert sessions.handoff_session_lock(device, "nobody", "c") is False
                        case 4:
                            assert sessions.touch_session_lock(device) is True
                assert sessions.get_session_lock(device) == holder
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(self.THREADS)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            done.set()
            sampler.join()
        try:
            assert not errors, errors[:3]
            assert max(seen) <= pool.limit, max(seen)
            assert max(seen) >= 2  # the sampler did see the pool's connections at work together
            assert 0 < pool.idle <= pool.size
            assert pool.waiting == 0
            holders = dict(observer.exec_driver_sql(
                "SELECT device_id, active_agent FROM conversation_states WHERE device_id LIKE %(p)s",
                {"p": f"conc-{run_id}-%"},
            ).all())
            assert holders == {f"conc-{run_id}-{i}": f"b{self.OPS - 3}" for i in range(self.THREADS)}
        finally:
            engine.dispose()


class Interrupt(BaseException):
    """Stands for KeyboardInterrupt, or a timeout library's exception, arriving mid-call."""


class TestInterrupted:
    def test_a_waiter_interrupted_leaves_the_queue_and_loses_no_slot(self, make_pool):
        import signal

        pool = make_pool(size=1, limit=1, timeout=30)
        held = pool.get()
        seen_waiting: list[int] = []

        def interrupt(signum, frame):  # noqa: ANN001, ANN202
            seen_waiting.append(pool.waiting)
            raise Interrupt

        previous = signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        try:
            with pytest.raises(Interrupt):
                pool.get()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert seen_waiting == [1]  # the signal arrived while the caller waited
        assert pool.waiting == 0
        pool.put(held)
        assert pool.idle == 1  # kept, not handed to the caller that left
        again = pool.get(timeout=1)
        assert again.connection is held.connection
        pool.put(again)


class TestForeignEngine:
    def test_an_engine_not_from_make_engine_keeps_its_own_pool_settings(self, direct_url):
        engine = sa.create_engine(direct_url, pool_size=1, max_overflow=0)
        try:
            assert run(engine, "SELECT 1 AS one", {}, rows="scalar") == 1
            # The statement's connection went back to SQLAlchemy's pool, which keeps it.
            assert engine.pool.checkedin() == 1 and engine.pool.checkedout() == 0
            assert run(engine, "SELECT pg_backend_pid()", {}, rows="scalar") == run(
                engine, "SELECT pg_backend_pid()", {}, rows="scalar")
        finally:
            engine.dispose()

    def test_a_write_after_a_connect_listener_statement_is_committed(self, direct_url, observer):
        # Not autocommit: the listener's SET opens a transaction psycopg would otherwise nest into.
        engine = sa.create_engine(direct_url, poolclass=sa.pool.NullPool)
        sa.event.listen(engine, "connect", lambda dbapi_conn, record: dbapi_conn.execute("SET search_path TO public"))
        table = f"listener_{uuid.uuid4().hex[:8]}"
        observer.exec_driver_sql(f"CREATE TABLE {table} (v text)")
        try:
            run(engine, f"INSERT INTO {table} VALUES ('kept')", {})
            assert observer.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() == 1
        finally:
            observer.exec_driver_sql(f"DROP TABLE {table}")
            engine.dispose()


class TestFork:
    @pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
    def test_a_forked_child_disposing_leaves_the_parents_connections_open(self, direct_engine, observer):
        pool = connection_pool(direct_engine)
        lent = pool.get()
        pid = lent.connection.info.backend_pid
        pool.put(lent)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running: the child only exits
            child = os.fork()
        if child == 0:  # the child: what a forking server's worker does before its own work
            try:
                direct_engine.dispose(close=False)
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        assert pid in app_pids(observer)  # the parent's backend is still there
        again = pool.get()
        assert again.connection.info.backend_pid == pid and works(again)
        pool.put(again)


class TestOutage:
    @staticmethod
    def unreachable(direct_url: str, where: str) -> str:
        url = make_url(direct_url)
        url = url.set(host="127.0.0.1", port=1) if where == "port" else url.set(database="no_such_database")
        return url.render_as_string(hide_password=False)

    @pytest.mark.parametrize("where", ["port", "database"])
    def test_a_connect_error_reaches_every_caller_and_leaks_no_slot(self, direct_url, where):
        engine = make_engine(direct_settings(self.unreachable(direct_url, where), db_pool_size=1, db_pool_timeout=0.2))
        pool = connection_pool(engine)
        sessions = SessionService(engine)
        try:
            for _ in range(3 * pool.limit):
                with pytest.raises(StoreUnavailable) as caught:
                    sessions.get_session_lock("outage")
                assert "PoolTimeout" not in str(caught.value)
                assert isinstance(caught.value.__cause__, psycopg.OperationalError | sa.exc.OperationalError)
            assert pool.idle == 0 and pool.waiting == 0
        finally:
            engine.dispose()


def test_set_local_timeout_runs_on_a_reused_connection(database_url, backend):
    """Behind PgBouncer too, SET LOCAL reaches the statement's transaction and the connection comes back idle."""
    engine = make_engine(make_settings(
        database_url, db_pool_size=1, db_statement_timeout_mode="local", db_statement_timeout_ms=1234,
    ))
    pool = connection_pool(engine)
    try:
        for _ in range(7):  # past psycopg's prepare threshold (5)
            assert run(engine, "SELECT current_setting('statement_timeout')", {}, rows="scalar") == "1234ms"
        assert pool.idle == 1
        lent = pool.get()
        # Outside run's transaction the setting is gone: it was SET LOCAL, not SET.
        assert lent.connection.execute("SHOW statement_timeout").fetchone()[0] != "1234ms"
        pool.put(lent)
        assert run(engine, "SELECT current_setting('statement_timeout')", {}, rows="scalar") == "1234ms"
        again = pool.get()
        assert again.connection is lent.connection
        pool.put(again)
    finally:
        engine.dispose()

"""A statement the server rolls back to break a deadlock or a serialization conflict runs once more."""

from __future__ import annotations

import logging
import threading
import uuid

import psycopg
import pytest

from app import SessionService
from app.core.db import arun, run
from app.core.engine import make_engine
from tests.conftest import make_settings
from tests.utils import aio
from tests.utils.agents import wait_for
from tests.utils.counting import count_statements, work

FIRST = "6d1e2f3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a"
SECOND = "7e2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b"


def bump_both(first_version: int) -> str:
    """One statement that locks FIRST's row, then SECOND's (a DO block runs its updates in order).

    Between the two it waits (at most 3.5 s, in 50 ms steps) for another transaction to queue behind it (on FIRST's
    row), then checks for deadlocks 10 ms into its own wait: so it is the statement that waits last and
    finds the cycle, and is rolled back, however slowly the test reaches its side. (A wait's deadlock
    check runs once, deadlock_timeout after the wait began.) A run that finds FIRST's row already bumped
    past first_version + 1 by the other transaction (the second run) goes straight on.
    """
    return f"""
DO $$
DECLARE
    bumped integer;
BEGIN
    UPDATE conversation_states SET version = version + 1 WHERE device_id = '{FIRST}' RETURNING version INTO bumped;
    FOR step IN 1..70 LOOP
        EXIT WHEN bumped > {first_version + 1} OR EXISTS (
            SELECT 1 FROM pg_stat_activity
            WHERE wait_event_type = 'Lock' AND pg_backend_pid() = ANY(pg_blocking_pids(pid)));
        PERFORM pg_sleep(0.05);
    END LOOP;
    PERFORM set_config('deadlock_timeout', '10ms', true);
    UPDATE conversation_states SET version = version + 1 WHERE device_id = '{SECOND}';
END $$
"""


# The statement under test holds FIRST's row and is looking for a transaction queued behind it.
LOOKING = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE wait_event = 'PgSleep' AND query LIKE '%RETURNING version INTO bumped%'"
)


def in_background(mode: str, engine, sql: str, params: dict, *, rows: str) -> tuple[threading.Thread, dict]:
    """Run one statement with run (mode "sync") or arun on a started thread; the dict gets its "result" or "error"."""
    outcome: dict[str, object] = {}

    def statement() -> None:
        try:
            if mode == "sync":
                outcome["result"] = run(engine, sql, params, rows=rows)
            else:
                outcome["result"] = aio.run(arun, engine, sql, params, rows=rows)
        except Exception as err:  # noqa: BLE001 - the test reports what it was
            outcome["error"] = err

    worker = threading.Thread(target=statement)
    worker.start()
    return worker, outcome


def versions(conn: psycopg.Connection) -> list[int]:
    rows = conn.execute(
        "SELECT version FROM conversation_states WHERE device_id = ANY(%s) ORDER BY device_id", [[FIRST, SECOND]]
    ).fetchall()
    return [row[0] for row in rows]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_deadlock_victim_is_run_again(engine, database_url, caplog, mode):
    sessions = SessionService(engine)
    for device in (FIRST, SECOND):
        sessions.set_session_lock(device, "billing")
    conninfo = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as watcher, psycopg.connect(conninfo) as blocker:
        before = versions(watcher)
        statement_sql = bump_both(before[0])
        # The blocker, which waits first, checks for deadlocks late: the statement under test finds the cycle.
        blocker.execute("SET deadlock_timeout = '30s'")
        blocker.execute(f"UPDATE conversation_states SET version = version + 1 WHERE device_id = '{SECOND}'")
        with caplog.at_level(logging.INFO, logger="app.core.db"), count_statements(engine) as statements:
            worker, outcome = in_background(mode, engine, statement_sql, {}, rows="all")
            assert wait_for(lambda: watcher.execute(LOOKING).fetchone()[0] == 1, 10), "never took FIRST's row"
            # Queued on FIRST's row: the statement under test goes on to SECOND's, closing the cycle; it is
            # rolled back, then this update goes through.
            blocker.execute(f"UPDATE conversation_states SET version = version + 1 WHERE device_id = '{FIRST}'")
            blocker.commit()
            worker.join(30)
        assert outcome == {"result": []}
        assert len(work(statements)) == 2  # the first run, rolled back, and the second
        assert any("rolled back" in record.getMessage() for record in caplog.records)
        # The blocker's two updates and one run of the statement (the rolled-back one left nothing).
        assert versions(watcher) == [v + 2 for v in before]


# Every transaction of the engine under test is SERIALIZABLE, as on a server configured so. The
# default comes as a startup option (libpq's `options`), which a transaction-mode pooler refuses:
# this test talks to PostgreSQL directly.
SERIALIZABLE = "options=-c%20default_transaction_isolation%3Dserializable"
BUMP = "UPDATE conversation_states SET version = version + 1 WHERE device_id = %(device)s RETURNING version"
# The statement under test, on the engine's connection, waits for the row the other transaction holds.
WAITING = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND wait_event_type = 'Lock' AND application_name = 'agent-sessions'"
    " AND query LIKE 'UPDATE conversation%'"
)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_serialization_failure_is_run_again(direct_url, caplog, mode):
    device = str(uuid.uuid4())
    # With its own statement timeout, which libpq's `options` carry too: the URL's must not be lost.
    # The URL may have a query already (embedded PostgreSQL's socket: ?host=/tmp/...).
    joined = f"{direct_url}{'&' if '?' in direct_url else '?'}{SERIALIZABLE}"
    settings = make_settings(joined, db_statement_timeout_ms=4000)
    serializable = make_engine(settings)
    conninfo = direct_url.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        SessionService(serializable).set_session_lock(device, "billing")
        assert run(serializable, "SHOW transaction_isolation", {}, rows="scalar") == "serializable"
        assert run(serializable, "SHOW statement_timeout", {}, rows="scalar") == "4s"
        with psycopg.connect(conninfo, autocommit=True) as watcher, psycopg.connect(conninfo) as other:
            [before] = watcher.execute(
                "SELECT version FROM conversation_states WHERE device_id = %s", [device]
            ).fetchone()
            other.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            other.execute("UPDATE conversation_states SET version = version + 1 WHERE device_id = %s", [device])
            with caplog.at_level(logging.INFO, logger="app.core.db"), count_statements(serializable) as statements:
                worker, outcome = in_background(mode, serializable, BUMP, {"device": device}, rows="scalar")
                assert wait_for(lambda: watcher.execute(WAITING).fetchone()[0] == 1, 10), "never waited for the row"
                # The statement's snapshot is older than this update: once it commits, the statement
                # cannot update the row it waited for (SQLSTATE 40001) and is rolled back.
                other.commit()
                worker.join(30)
        assert outcome == {"result": before + 2}
        assert work(statements) == [BUMP, BUMP]  # the failed run and the second one
        retried = [record.getMessage() for record in caplog.records if "rolled back" in record.getMessage()]
        assert len(retried) == 1 and "could not serialize access" in retried[0], retried
    finally:
        serializable.dispose()

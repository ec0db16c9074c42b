"""A deterministic replay of the race the load test hits: a claim that wins a lease the holder just freed.

The claim's statement reads the device's oldest pending message from its snapshot,
taken while the holder's finish was still uncommitted; the lease test, though, runs
on the newest row version, after that finish committed and freed the lease. The
claimer then handles the message the holder already answered.
"""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from app.pipeline import Inbound, Pipeline
from tests.conftest import make_settings
from tests.reliability.ledger_checks import stored_messages
from tests.utils import aio
from tests.utils.load_agents import registry

DEVICE = "race-device"


def waiting_on_locks(engine, count: int, seconds: float = 10.0) -> bool:
    """True once count backends of this database wait on a lock (bounded poll)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with engine.begin() as conn:
            waiting = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).scalar()
        if waiting >= count:
            return True
        time.sleep(0.02)
    return False


def test_a_message_answered_by_the_previous_holder_is_not_answered_again(database_url, engine):
    pipeline = Pipeline(engine, registry, make_settings(database_url))
    ledger = pipeline.ledger
    first = aio.run(ledger.claim, "default", DEVICE, "first say", external_id=None, metadata={})
    assert first.lease is not None and first.lease.first.last.id == first.message_id
    outcome = aio.run(
        pipeline.agents.decide, first.lease.first, "default", DEVICE, first.lease.context, first.lease.lock
    )

    # Hold the first message's row so the holder's finish stops half-way: it has updated (and
    # locked) the device's row and waits to mark the message done, uncommitted.
    blocker = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    errors: list[BaseException] = []

    def run(target):
        def wrapped():
            try:
                target()
            except BaseException as err:  # noqa: BLE001 - reported by the test below
                errors.append(err)

        return threading.Thread(target=wrapped, daemon=True)

    results = {}
    with blocker.connect() as conn:
        conn.exec_driver_sql(
            "SELECT 1 FROM conversation_messages WHERE id = %(id)s FOR UPDATE", {"id": first.message_id}
        )
        finish = run(lambda: aio.run(ledger.finish, first.lease, first.lease.first, outcome))
        finish.start()
        assert waiting_on_locks(engine, 1), "the finish did not block on the held message row"
        # A second message arrives now: its snapshot still sees the first one pending.
        second = run(
            lambda: results.setdefault("second", aio.run(pipeline.handle, Inbound("default", DEVICE, "second say")))
        )
        second.start()
        assert waiting_on_locks(engine, 2), "the second claim did not queue behind the finish"
        conn.commit()  # the finish completes (freeing the lease), then the claim wins it
    finish.join(30)
    second.join(30)
    blocker.dispose()
    assert errors == [] and not finish.is_alive() and not second.is_alive()
    assert results["second"].status == "answered" and "second say" in results["second"].reply

    rows = stored_messages(engine)[DEVICE]
    assert [(row.content, len(row.replies)) for row in rows] == [("first say", 1), ("second say", 1)]


def lease_is_live(engine, device: str) -> bool:
    with engine.begin() as conn:
        return (
            conn.exec_driver_sql(
                "SELECT lease_expires_at > now() FROM conversation_states WHERE device_id = %(d)s", {"d": device}
            ).scalar()
            is True
        )


def test_a_waiter_whose_message_is_answered_leaves_no_lease_behind(database_url, engine):
    """The load test's 30-second stalls: a poll that finds its message answered may also take a free lease.

    Here the lease holder answers the waiter's message, then stops (a crash, or an agent
    outliving the lease) with a later message still pending. The waiter's next poll sees
    its answer and, the lease having expired, takes it for the pending message; the
    waiter must then handle that message (or free the lease), not return holding it.
    """
    # A lease far longer than the test: only what the waiter does can free it.
    pipeline = Pipeline(engine, registry, make_settings(database_url, lease_seconds=300))
    ledger = pipeline.ledger
    holder = aio.run(ledger.claim, "default", DEVICE, "first say", external_id=None, metadata={})
    waiter = aio.run(ledger.claim, "default", DEVICE, "second say", external_id=None, metadata={})
    later = aio.run(ledger.claim, "default", DEVICE, "third say", external_id=None, metadata={})
    assert holder.lease is not None and waiter.lease is None and later.lease is None
    lease, current = holder.lease, holder.lease.first
    for _ in range(2):  # the holder answers the first and second messages, then stops
        outcome = aio.run(pipeline.agents.decide, current, "default", DEVICE, lease.context, lease.lock)
        current = aio.run(ledger.finish, lease, current, outcome).next
    assert current is not None and current.last.id == later.message_id
    with engine.begin() as conn:  # the holder stops: its lease runs out
        conn.exec_driver_sql("UPDATE conversation_states SET lease_expires_at = now() - interval '1 second'")
    assert not lease_is_live(engine, DEVICE)

    result = aio.run(pipeline._wait, "default", DEVICE, waiter.message_id, None, None, duplicate=False)

    assert result.status == "answered" and "second say" in result.reply
    rows = stored_messages(engine)[DEVICE]
    third = next(row for row in rows if row.content == "third say")
    # The waiter took the 300-second lease for 'third say': it must have answered it (and freed the lease).
    assert third.status == "done", "the waiter returned holding the lease while 'third say' waits"
    assert not lease_is_live(engine, DEVICE)

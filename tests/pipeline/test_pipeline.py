"""The message pipeline against real PostgreSQL: routing, leases, ordering, exactly-once."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.agents import AgentInput, AgentReply, Handoff, Keep
from app.agents.runner import FAILURE_REPLY
from app.errors import LeaseLost
from app.ledger import Ledger, Outcome
from app.pipeline import Inbound, Pipeline
from tests.conftest import make_settings
from tests.utils import aio
from tests.utils.agents import Boom, Gate, Scripted, demo_registry, routing_registry
from tests.utils.counting import count_statements, work
from tests.utils.states import row

DEVICE = "0b7e7f7e-1111-4c4c-9d9d-000000000001"
OTHER = "0b7e7f7e-1111-4c4c-9d9d-000000000002"


def make_pipeline(engine, database_url, registry=None, **overrides) -> Pipeline:
    return Pipeline(engine, registry or routing_registry(), make_settings(database_url, **overrides))


def send(pipeline: Pipeline, text: str, device: str = DEVICE, **kwargs):
    return aio.run(pipeline.handle, Inbound("default", device, text, **kwargs))


def messages(engine, device: str = DEVICE) -> list[tuple]:
    with engine.begin() as conn:
        return conn.exec_driver_sql(
            "SELECT role, content, agent, status, reply_to FROM conversation_messages "
            "WHERE device_id = %(d)s ORDER BY id",
            {"d": device},
        ).all()


class TestRouting:
    def test_no_lock_goes_to_manager_and_keeps_no_lock(self, engine, database_url):
        pipeline = make_pipeline(engine, database_url)
        result = send(pipeline, "hello")
        assert (result.status, result.agent, result.reply, result.lock_agent) == (
            "answered",
            "manager",
            "manager: hello",
            None,
        )
        assert row(engine, DEVICE)["active_agent"] is None

    def test_handoff_answers_same_message_and_takes_lock(self, engine, database_url):
        registry = routing_registry()
        pipeline = make_pipeline(engine, database_url, registry)
        result = send(pipeline, "sched please")
        assert result.agent == "scheduling"
        assert result.reply == "manager: sched please scheduling: sched please"
        assert result.lock_agent == "scheduling"
        assert registry["scheduling"].seen[0].lock == "scheduling"
        state = row(engine, DEVICE)
        assert state["active_agent"] == "scheduling"
        assert 86390 < state["remaining"] <= 86400

    def test_handoff_ttl_is_applied(self, engine, database_url):
        result = send(make_pipeline(engine, database_url), "bill me")
        assert result.lock_agent == "billing"
        state = row(engine, DEVICE)
        assert state["session_ttl"] == 120
        assert 110 < state["remaining"] <= 120

    def test_keep_slides_expiry_and_goes_to_holder(self, engine, database_url):
        registry = routing_registry()
        pipeline = make_pipeline(engine, database_url, registry)
        send(pipeline, "sched")
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE conversation_states SET expires_at = now() + interval '10 seconds'")
        locked_at = row(engine, DEVICE)["locked_at"]
        result = send(pipeline, "tuesday")
        assert result.agent == "scheduling"
        assert len(registry["manager"].seen) == 1  # the second message never reached the manager
        state = row(engine, DEVICE)
        assert state["remaining"] > 86000
        assert state["locked_at"] == locked_at

    def test_release_sends_next_message_to_manager(self, engine, database_url):
        registry = routing_registry()
        pipeline = make_pipeline(engine, database_url, registry)
        send(pipeline, "sched")
        result = send(pipeline, "done")
        assert (result.agent, result.lock_agent) == ("scheduling", None)
        assert row(engine, DEVICE)["active_agent"] is None
        assert send(pipeline, "again").agent == "manager"

    def test_expired_lock_goes_to_manager(self, engine, database_url):
        pipeline = make_pipeline(engine, database_url)
        send(pipeline, "sched")
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE conversation_states SET expires_at = now() - interval '1 second'")
        assert send(pipeline, "hello").agent == "manager"

    def test_unknown_agent_in_lock_falls_back_to_manager(self, engine, database_url, sessions, caplog):
        sessions.set_session_lock(DEVICE, "retired")
        with caplog.at_level(logging.WARNING, logger="app.pipeline"):
            result = send(make_pipeline(engine, database_url), "hello")
        assert (result.status, result.agent, result.lock_agent) == ("answered", "manager", None)
        assert row(engine, DEVICE)["active_agent"] is None
        assert "unknown agent retired" in caplog.text

    def test_unknown_agent_in_lock_manager_can_hand_off(self, engine, database_url, sessions):
        sessions.set_session_lock(DEVICE, "retired")
        result = send(make_pipeline(engine, database_url), "sched now")
        assert (result.agent, result.lock_agent) == ("scheduling", "scheduling")

    def test_failing_agent_is_recorded_not_raised(self, engine, database_url, sessions):
        registry = {**routing_registry(), "billing": Boom()}
        sessions.set_session_lock(DEVICE, "billing")
        result = send(make_pipeline(engine, database_url, registry), "pay")
        assert result.reply == FAILURE_REPLY
        assert result.lock_agent == "billing"
        with engine.begin() as conn:
            status, has_error, error = conn.exec_driver_sql(
                "SELECT status, has_error, error_message FROM conversation_messages WHERE role = 'user'"
            ).one()
        assert (status, has_error) == ("failed", True)
        assert "model endpoint returned 500" in error

    def test_ledger_keeps_both_sides(self, engine, database_url):
        send(make_pipeline(engine, database_url), "sched")
        rows = messages(engine)
        assert [(r.role, r.status) for r in rows] == [("user", "done"), ("assistant", None)]
        assert rows[1].reply_to is not None and rows[1].agent == "scheduling"


class TestContext:
    def test_patches_merge_and_lists_are_capped(self, engine, database_url):
        calls = iter(range(100))

        def patch(message: AgentInput):
            n = next(calls)
            return AgentReply(
                "ok",
                context={
                    "conversation_state": {f"k{n}": n, "drop": None} if n else {"drop": 1, "keep": "x"},
                    "recent_interactions": [n],
                    "user_preferences": {"lang": "de"},
                },
            )

        agent = type("Patcher", (), {"handle": staticmethod(patch)})()
        pipeline = make_pipeline(engine, database_url, {"manager": agent}, context_list_cap=3)
        for text in "abcde":
            send(pipeline, text)
        context = row(engine, DEVICE)["context"]
        assert context["conversation_state"] == {"keep": "x", "k1": 1, "k2": 2, "k3": 3, "k4": 4}
        assert context["recent_interactions"] == [2, 3, 4]
        assert context["user_preferences"] == {"lang": "de"}

    def test_agent_sees_stored_context(self, engine, database_url):
        registry = routing_registry()
        registry["manager"].context = {"conversation_state": {"seen": True}}
        pipeline = make_pipeline(engine, database_url, registry)
        send(pipeline, "one")
        send(pipeline, "two")
        assert registry["manager"].seen[1].context["conversation_state"] == {"seen": True}
        assert registry["manager"].seen[1].context["interrupted_queries"] == []


class TestExactlyOnce:
    def test_same_external_id_acts_once(self, engine, database_url):
        registry = routing_registry()
        pipeline = make_pipeline(engine, database_url, registry)
        first = send(pipeline, "sched", external_id="wamid.1")
        version = row(engine, DEVICE)["version"]
        again = send(pipeline, "sched", external_id="wamid.1")
        assert again.duplicate and not first.duplicate
        assert (again.reply, again.agent, again.message_id) == (first.reply, first.agent, first.message_id)
        assert len(registry["manager"].seen) == 1
        assert row(engine, DEVICE)["version"] == version
        assert len(messages(engine)) == 2

    def test_external_ids_are_per_tenant(self, engine, database_url):
        pipeline = make_pipeline(engine, database_url)
        aio.run(pipeline.handle, Inbound("acme", DEVICE, "hi", "wamid.9"))
        result = aio.run(pipeline.handle, Inbound("globex", DEVICE, "hi", "wamid.9"))
        assert not result.duplicate


class TestLease:
    def ledger(self, engine, lease_seconds=30) -> Ledger:
        return Ledger(engine, lease_seconds=lease_seconds, default_ttl=86400, context_cap=20)

    def outcome(self, reply="late") -> Outcome:
        return Outcome(reply, "manager", None, None, None, {}, [], 1)

    def test_stale_worker_cannot_finish(self, engine):
        ledger = self.ledger(engine)
        stale = aio.run(ledger.claim, "default", DEVICE, "first", external_id=None, metadata={})
        with engine.begin() as conn:  # the stale worker's lease runs out
            conn.exec_driver_sql("UPDATE conversation_states SET lease_expires_at = now() - interval '1 second'")
        fresh = aio.run(ledger.poll, "default", DEVICE, stale.message_id)
        assert fresh.lease is not None and fresh.lease.epoch == stale.lease.epoch + 1
        with pytest.raises(LeaseLost):
            aio.run(ledger.finish, stale.lease, stale.lease.first, self.outcome())
        assert [r.status for r in messages(engine)] == ["pending"]
        assert fresh.lease.first is None  # a poll re-reads what is pending once it holds the lease
        first = aio.run(ledger.next_turn, fresh.lease)
        assert [m.text for m in first.messages] == ["first"] and first.attempt == 2  # the stale worker started it
        finished = aio.run(ledger.finish, fresh.lease, first, self.outcome("fresh"))
        assert finished.answer.reply == "fresh"
        assert [(r.role, r.content) for r in messages(engine)] == [("user", "first"), ("assistant", "fresh")]

    def test_expired_lease_of_same_epoch_cannot_finish(self, engine):
        ledger = self.ledger(engine)
        claim = aio.run(ledger.claim, "default", DEVICE, "first", external_id=None, metadata={})
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE conversation_states SET lease_expires_at = now() - interval '1 second'")
        with pytest.raises(LeaseLost):
            aio.run(ledger.finish, claim.lease, claim.lease.first, self.outcome())

    def test_crashed_worker_message_is_handled_once_by_next_message(self, engine, database_url):
        registry = routing_registry()
        crashed = aio.run(self.ledger(engine).claim, "default", DEVICE, "lost in crash", external_id=None, metadata={})
        assert crashed.lease is not None  # the worker took the lease, then died
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE conversation_states SET lease_expires_at = now() - interval '1 second'")
        result = send(make_pipeline(engine, database_url, registry), "next")
        assert result.reply == "manager: next"
        assert [m.text for m in registry["manager"].seen] == ["lost in crash", "next"]
        assert [(r.role, r.content, r.status) for r in messages(engine)] == [
            ("user", "lost in crash", "done"),
            ("user", "next", "done"),
            ("assistant", "manager: lost in crash", None),
            ("assistant", "manager: next", None),
        ]

    def test_drain_picks_up_pending_after_lease_expiry(self, engine, database_url):
        registry = routing_registry()
        aio.run(self.ledger(engine).claim, "default", DEVICE, "orphan", external_id=None, metadata={})
        pipeline = make_pipeline(engine, database_url, registry)
        assert aio.run(pipeline.drain, "default", DEVICE) == 0  # lease still live: not ours to take
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE conversation_states SET lease_expires_at = now() - interval '1 second'")
        delivered = []
        assert aio.run(pipeline.drain, "default", DEVICE, lambda m, a: delivered.append((m.text, a.reply))) == 1
        assert delivered == [("orphan", "manager: orphan")]
        assert aio.run(pipeline.drain, "default", DEVICE) == 0
        assert row(engine, DEVICE)["lease_expires_at"] is None


class TestOrdering:
    def test_concurrent_messages_of_one_device_in_order_once(self, engine, database_url):
        order: list[str] = []
        gate_lock = threading.Lock()

        def record(message: AgentInput):
            with gate_lock:
                order.append(message.text)
            return Keep()

        manager = Gate(Scripted("manager", record), when=lambda m: m.text == "m0")
        pipeline = make_pipeline(engine, database_url, {"manager": manager})
        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(send, pipeline, "m0")
            assert manager.entered.wait(10)
            # The device is busy with m0: these arrive one after the other and must queue.
            futures = []
            for i in range(1, 8):
                futures.append(pool.submit(send, pipeline, f"m{i}"))
                wait_until(lambda stored=i + 1: count_user_messages(engine) == stored)
            manager.release.set()
            results = [first.result(30)] + [f.result(30) for f in futures]
        assert [r.reply for r in results] == [f"manager: m{i}" for i in range(8)]
        assert order == [f"m{i}" for i in range(8)]
        rows = messages(engine)
        assert [r.content for r in rows if r.role == "user"] == [f"m{i}" for i in range(8)]
        assert all(r.status == "done" for r in rows if r.role == "user")
        assert len(rows) == 16

    def test_busy_device_does_not_hold_up_others(self, engine, database_url):
        manager = Gate(Scripted("manager"), when=lambda m: m.device_id == DEVICE)
        pipeline = make_pipeline(engine, database_url, {"manager": manager})
        with ThreadPoolExecutor(2) as pool:
            busy = pool.submit(send, pipeline, "slow", DEVICE)
            assert manager.entered.wait(10)
            other = send(pipeline, "fast", OTHER)
            assert other.reply == "manager: fast"
            assert not busy.done()  # answered while DEVICE's agent is still thinking
            manager.release.set()
            assert busy.result(30).reply == "manager: slow"

    def test_waiter_gives_up_with_queued_and_message_is_answered_later(self, engine, database_url):
        manager = Gate(Scripted("manager"), when=lambda m: m.text == "slow")
        pipeline = make_pipeline(engine, database_url, {"manager": manager}, chat_wait_seconds=0.2)
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(send, pipeline, "slow")
            assert manager.entered.wait(10)
            queued = send(pipeline, "behind", external_id="k1")
            assert queued.status == "queued" and queued.message_id is not None
            manager.release.set()
            busy.result(30)
        again = send(pipeline, "behind", external_id="k1")
        assert (again.status, again.reply, again.duplicate) == ("answered", "manager: behind", True)


class TestNoTransactionWhileThinking:
    def test_no_open_transaction_while_agent_runs(self, engine, database_url):
        thinking, sampled = threading.Event(), threading.Event()

        class Sleeper:
            def handle(self, message: AgentInput) -> AgentReply:
                thinking.set()
                assert sampled.wait(60)  # the agent thinks until the test has looked ten times
                return AgentReply("slept", lock=Handoff("scheduling"))

        registry = {"manager": Sleeper(), "scheduling": Scripted("scheduling")}
        pipeline = make_pipeline(engine, database_url, registry)
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(send, pipeline, "wake up")
            assert thinking.wait(10)
            samples = []
            while len(samples) < 10:  # every sample is taken while the agent runs
                with engine.connect() as conn:
                    samples.append(
                        conn.exec_driver_sql(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'agent-sessions' "
                            "AND datname = current_database() "
                            "AND pid <> pg_backend_pid() AND (xact_start IS NOT NULL OR state LIKE 'idle in%%')"
                        ).scalar()
                    )
            sampled.set()
            assert future.result().agent == "scheduling"
        assert max(samples) == 0


class TestRoundTrips:
    def test_at_most_three_statements_per_message(self, engine, database_url):
        pipeline = make_pipeline(engine, database_url)
        for text in ("sched", "tuesday", "done", "hello"):
            with count_statements(engine) as statements:
                send(pipeline, text)
            assert len(work(statements)) <= 3, statements
            assert len(work(statements)) == 2  # claim + finish


def count_user_messages(engine) -> int:
    with engine.begin() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM conversation_messages WHERE role = 'user'").scalar()


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def test_demo_registry_runs_a_booking(engine, database_url):
    pipeline = make_pipeline(engine, database_url, demo_registry)
    replies = [send(pipeline, text) for text in ("book an appointment", "friday", "10am", "yes")]
    assert [r.agent for r in replies] == ["scheduling"] * 4
    assert [r.lock_agent for r in replies] == ["scheduling"] * 3 + [None]
    assert "friday at 10:00" in replies[-1].reply
    context = row(engine, DEVICE)["context"]
    assert context["recent_interactions"] == [{"type": "appointment", "day": "friday", "time": "10:00"}]
    assert "flow" not in context["conversation_state"]

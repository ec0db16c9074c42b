"""Adversarial agent-turn tests: interleavings forced with Gate agents and PostgreSQL row locks.

No sleeps as synchronisation: a test holds a device row with SELECT ... FOR UPDATE in
its own transaction and polls pg_stat_activity until the statements it started are
queued behind that lock, so the order in which they take the row is fixed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from app.admin import AdminStore
from app.agents import AgentInput, AgentReply, Handoff
from app.agents.runner import FAILURE_REPLY
from app.core.engine import make_engine
from app.errors import IdempotencyKeyReused
from app.pipeline import Inbound
from tests.conftest import make_settings
from tests.pipeline.test_turns import DEVICE, Echo, inbound_rows, pipeline_with, replies, send, wait_for
from tests.utils import aio
from tests.utils.agents import Gate, Scripted
from tests.utils.proxy import outage_proxy
from tests.utils.states import row

CLAIMS = "%WITH known AS%"
FINISHES = "%WITH snap AS (%), nxt AS (%"  # pg_stat_activity keeps only the statement's start


@contextlib.contextmanager
def device_row_locked(database_url: str, device: str = DEVICE) -> Iterator[sa.Connection]:
    """Hold the device's conversation_states row (FOR UPDATE) until the block's end or conn.commit()."""
    blocker = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with blocker.connect() as conn:
            conn.exec_driver_sql(
                "SELECT 1 FROM conversation_states WHERE tenant_id = 'default' AND device_id = %(d)s FOR UPDATE",
                {"d": device},
            )
            yield conn
            conn.commit()
    finally:
        blocker.dispose()


def waiting(engine, pattern: str) -> int:
    """Statements of this database matching pattern that wait on a lock."""
    with engine.begin() as conn:
        return conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE %(p)s",
            {"p": pattern},
        ).scalar()


def expire_lease(engine, device: str = DEVICE) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE conversation_states SET lease_expires_at = now() - interval '1 second' WHERE device_id = %(d)s",
            {"d": device},
        )


@pytest.fixture
def patient(engine, database_url) -> Iterator:
    """An engine whose statements may wait on a test's row lock past the default statement timeout."""
    patient = make_engine(make_settings(database_url, db_statement_timeout_ms=60_000))
    yield patient
    patient.dispose()


def outcome(future):
    try:
        return future.result(timeout=60)
    except IdempotencyKeyReused as err:
        return err


class TestConcurrentIdempotencyKeys:
    """Two requests with one Idempotency-Key whose claims both start before either commits."""

    def _race(self, engine, database_url, first_text: str, second_text: str):
        pipeline = pipeline_with(engine, database_url, {"manager": Echo()}, db_statement_timeout_ms=60_000)
        send(pipeline, "hello")  # the device row exists, so it can be held
        with device_row_locked(database_url) as blocker, ThreadPoolExecutor(2) as pool:
            first = pool.submit(send, pipeline, first_text, external_id="web:k")
            assert wait_for(lambda: waiting(engine, CLAIMS) == 1)
            second = pool.submit(send, pipeline, second_text, external_id="web:k")
            assert wait_for(lambda: waiting(engine, CLAIMS) == 2)  # both snapshots predate either insert
            blocker.commit()
            return outcome(first), outcome(second)

    def test_a_key_reused_concurrently_with_another_body_is_refused(self, engine, patient, database_url):
        first, second = self._race(patient, database_url, "book friday", "book monday")
        assert first.reply == "re: book friday"
        assert isinstance(second, IdempotencyKeyReused), second  # the issue: 422 idempotency_key_reused
        assert [r.content for r in inbound_rows(engine)] == ["hello", "book friday"]

    def test_a_concurrent_retry_with_the_same_key_gets_the_first_answer(self, engine, patient, database_url):
        first, second = self._race(patient, database_url, "book friday", "book friday")
        assert first.reply == "re: book friday"
        assert (second.status, second.message_id, second.duplicate) == ("answered", first.message_id, True), second
        assert second.reply == first.reply

    def test_a_sequential_reuse_while_older_messages_wait_changes_nothing(self, engine, database_url):
        """The refused key must not touch the row even when it could take a freed lease."""
        pipeline = pipeline_with(engine, database_url, {"manager": Echo()})
        aio.run(pipeline.ledger.claim, "default", DEVICE, "book friday", external_id="web:k", metadata={})
        expire_lease(engine)  # the holder died: the message waits, the lease is free
        before = row(engine, DEVICE)
        with pytest.raises(IdempotencyKeyReused):
            send(pipeline, "book monday", external_id="web:k")
        after = row(engine, DEVICE)
        assert (after["version"], after["lease_epoch"]) == (before["version"], before["lease_epoch"])
        again = send(pipeline, "book friday", external_id="web:k")  # the same request takes the lease and runs it
        assert (again.reply, again.duplicate) == ("re: book friday", True)


class TestMergedAttempts:
    def test_a_poison_message_does_not_fail_the_fresh_messages_merged_with_it(self, engine, database_url):
        """After AGENT_MAX_ATTEMPTS the poison message fails and the device moves on: the others still run."""
        echo = Echo()
        pipeline = pipeline_with(engine, database_url, {"manager": echo}, burst_mode="merge", agent_max_attempts=1)
        aio.run(
            pipeline.ledger.claim, "default", DEVICE, "poison", external_id=None, metadata={}
        )  # started; holder dies
        aio.run(pipeline.ledger.claim, "default", DEVICE, "waiting", external_id=None, metadata={})  # queued behind it
        expire_lease(engine)
        result = send(pipeline, "next")
        statuses = [(r.content, r.status) for r in inbound_rows(engine)]
        assert echo.seen, f"no agent ran; every message failed: {statuses}"
        assert result.reply != FAILURE_REPLY, statuses
        assert statuses[0] == ("poison", "failed")
        assert [status for _, status in statuses[1:]] == ["done", "done"]


class TestEpochFencing:
    def test_a_holder_from_before_an_erasure_cannot_write_into_the_recreated_device(self, engine, database_url):
        """An erased device's row is recreated at lease_epoch 1: the stale holder's epoch must not match it."""
        echo = Echo()
        hold_old = Gate(echo, when=lambda m: m.text == "old")
        hold_new = Gate(hold_old, when=lambda m: m.text == "new")
        pipeline = pipeline_with(engine, database_url, {"manager": hold_new}, chat_wait_seconds=1)
        with ThreadPoolExecutor(2) as pool:
            old = pool.submit(send, pipeline, "old")
            assert hold_old.entered.wait(10)
            assert AdminStore(engine).erase("default", DEVICE)
            new = pool.submit(send, pipeline, "new")
            assert hold_new.entered.wait(10)  # the new holder's lease is live
            hold_old.release.set()  # the stale holder finishes with its old epoch
            # fenced: the stale holder writes nothing and its request gives up waiting (chat_wait_seconds)
            wait_for(lambda: len(replies(engine)) >= 1 or old.done())
            hold_new.release.set()
            old.result(timeout=60), new.result(timeout=60)
        runs = [m.text for m in echo.seen]
        stored = [r.content for r in replies(engine)]
        assert stored == ["re: new"], f"stored replies {stored}; agent runs {runs}"
        assert runs.count("new") == 1, runs


class TestHistoryFromTheFinish:
    def test_a_queued_messages_history_names_the_agent_the_earlier_message_went_to(self, engine, database_url):
        """The same history whether the turn came from the claim or from the previous finish."""
        echo = Echo()
        gate = Gate(echo, when=lambda m: m.text == "first")
        pipeline = pipeline_with(engine, database_url, {"manager": gate})
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(send, pipeline, "first")
            assert gate.entered.wait(10)
            second = pool.submit(send, pipeline, "second")
            assert wait_for(lambda: len(inbound_rows(engine)) == 2)
            gate.release.set()
            first.result(timeout=60), second.result(timeout=60)
        queued = echo.seen[-1]
        send(pipeline, "third")  # from the claim: the reference
        fresh = echo.seen[-1]
        assert [(h.role, h.agent) for h in fresh.history][:2] == [("user", "manager"), ("assistant", "manager")]
        assert [(h.role, h.content, h.agent) for h in queued.history] == [
            ("user", "first", "manager"),
            ("assistant", "re: first", "manager"),
        ]

    def test_a_new_session_started_mid_turn_leaves_no_reply_without_its_question(self, engine, database_url, sessions):
        echo = Echo()
        gate = Gate(echo, when=lambda m: m.text == "old question")
        pipeline = pipeline_with(engine, database_url, {"manager": gate})
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(send, pipeline, "old question")
            assert gate.entered.wait(10)
            sessions.start_new_session(DEVICE)
            second = pool.submit(send, pipeline, "new question")
            assert wait_for(lambda: len(inbound_rows(engine)) == 2)
            gate.release.set()
            first.result(timeout=60), second.result(timeout=60)
        history = [(h.role, h.content) for h in echo.seen[-1].history]
        assert history in ([], [("user", "old question"), ("assistant", "re: old question")]), history

    def test_merged_turn_history_excludes_the_burst_and_keeps_turn_order(self, engine, database_url):
        echo = Echo()
        gate = Gate(echo, when=lambda m: m.text == "hi")
        pipeline = pipeline_with(engine, database_url, {"manager": gate}, burst_mode="merge")
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(send, pipeline, "hi")
            assert gate.entered.wait(10)
            a = pool.submit(send, pipeline, "a")
            assert wait_for(lambda: len(inbound_rows(engine)) == 2)
            b = pool.submit(send, pipeline, "b")
            assert wait_for(lambda: len(inbound_rows(engine)) == 3)
            gate.release.set()
            [f.result(timeout=60) for f in (first, a, b)]
        assert [(h.role, h.content) for h in echo.seen[1].history] == [("user", "hi"), ("assistant", "re: hi")]
        send(pipeline, "c")
        assert [(h.role, h.content) for h in echo.seen[-1].history] == [
            ("user", "hi"),
            ("assistant", "re: hi"),
            ("user", "a"),
            ("user", "b"),
            ("assistant", "re: a\nb"),
        ]


class TestFinishRacingAClaim:
    @pytest.mark.parametrize("claim_first", [False, True])
    def test_a_claim_racing_the_last_finish_is_never_stranded(self, engine, patient, database_url, claim_first):
        """With wait=False nobody polls: the finish must keep the lease, or the claim must take it."""
        echo = Echo()
        gate = Gate(echo, when=lambda m: m.text == "first")
        pipeline = pipeline_with(patient, database_url, {"manager": gate}, db_statement_timeout_ms=60_000)

        def post(text: str):
            return aio.run(pipeline.handle, Inbound("default", DEVICE, text), wait=False)

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, "first")
            assert gate.entered.wait(10)
            with device_row_locked(database_url) as blocker:
                if claim_first:
                    second = pool.submit(post, "second")
                    assert wait_for(lambda: waiting(engine, CLAIMS) == 1)
                    gate.release.set()
                    assert wait_for(lambda: waiting(engine, FINISHES) == 1)
                else:
                    gate.release.set()
                    assert wait_for(lambda: waiting(engine, FINISHES) == 1)
                    second = pool.submit(post, "second")
                    assert wait_for(lambda: waiting(engine, CLAIMS) == 1)
                blocker.commit()
            first.result(timeout=60), second.result(timeout=60)
        assert [(r.content, r.status) for r in inbound_rows(engine)] == [("first", "done"), ("second", "done")]
        assert [m.text for m in echo.seen] == ["first", "second"]
        state = row(engine, DEVICE)
        assert state["lease_expires_at"] is None  # the last holder freed it


class TestTimeouts:
    def test_a_timed_out_turn_is_not_run_again_by_recovery(self, engine, database_url):
        release = threading.Event()
        calls: list[str] = []

        class Stuck:
            def handle(self, message: AgentInput) -> AgentReply:
                calls.append(message.text)
                release.wait(30)
                return AgentReply("late", lock=Handoff("scheduling"))

        registry = {"manager": Stuck(), "scheduling": Scripted("scheduling")}
        pipeline = pipeline_with(engine, database_url, registry, agent_timeout_seconds=0.3, lease_seconds=1)
        try:
            assert send(pipeline, "hello").reply == FAILURE_REPLY
            expire_lease(engine)
            assert aio.run(pipeline.recover) == 0
            assert calls == ["hello"]
            assert [(r.status, r.attempts) for r in inbound_rows(engine)] == [("failed", 1)]
        finally:
            release.set()


class TestOutageMidTurn:
    def test_a_stored_message_is_not_also_answered_statelessly(self, database_url, engine):
        """The claim stored the message and the agent ran; the finish meets an outage."""
        echo = Echo()
        gate = Gate(echo, when=lambda m: m.text == "hello")
        with outage_proxy(database_url) as proxy:
            settings = make_settings(proxy.url, db_connect_timeout=2, lease_seconds=1)
            proxied = make_engine(settings)
            try:
                pipeline = pipeline_with(proxied, proxy.url, {"manager": gate}, db_connect_timeout=2, lease_seconds=1)
                with ThreadPoolExecutor(1) as pool:
                    future = pool.submit(send, pipeline, "hello")
                    assert gate.entered.wait(10)
                    proxy.down()
                    gate.release.set()
                    result = future.result(timeout=60)
                proxy.up()
                stored = inbound_rows(engine)
                assert [r.content for r in stored] == ["hello"]  # acknowledged by the store before the outage
                runs = [m.text for m in echo.seen]
                assert result.status != "degraded" and runs == ["hello"], (result.status, result.reply, runs)
            finally:
                proxied.dispose()


class TestExportImportRoundTrip:
    def _merged_burst_moved(self, engine, database_url):
        """A merged burst with idempotency keys, then the device exported, erased and imported back."""
        from app.admin.transfer import export_device, import_device

        echo = Echo()
        gate = Gate(echo, when=lambda m: m.text == "hi")
        pipeline = pipeline_with(engine, database_url, {"manager": gate}, burst_mode="merge")
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(send, pipeline, "hi", external_id="web:k0")
            assert gate.entered.wait(10)
            a = pool.submit(send, pipeline, "a", external_id="web:ka")
            assert wait_for(lambda: len(inbound_rows(engine)) == 2)
            b = pool.submit(send, pipeline, "b", external_id="web:kb")
            assert wait_for(lambda: len(inbound_rows(engine)) == 3)
            gate.release.set()
            [f.result(timeout=60) for f in (first, a, b)]
        document = export_device(engine, "default", DEVICE)
        assert AdminStore(engine).erase("default", DEVICE)
        import_device(engine, "default", document)
        return pipeline

    def test_a_retried_merged_message_still_gets_its_reply_after_an_import(self, engine, database_url):
        pipeline = self._merged_burst_moved(engine, database_url)
        again = send(pipeline, "a", external_id="web:ka")
        assert (again.duplicate, again.reply, again.merged) == (True, "re: a\nb", True), again

    def test_a_key_reused_with_another_body_is_still_refused_after_an_import(self, engine, database_url):
        pipeline = self._merged_burst_moved(engine, database_url)
        with pytest.raises(IdempotencyKeyReused):
            send(pipeline, "something else", external_id="web:ka")


class TestWorkingHook:
    def test_a_slow_working_hook_does_not_let_the_lease_lapse_mid_turn(self, engine, database_url):
        """on_working runs inline in the renewal loop: while it blocks, nothing renews the lease."""
        echo = Echo()
        gate = Gate(echo, when=lambda m: m.attempt == 1)
        hook_release = threading.Event()
        calls: list[int] = []

        def on_working(message) -> None:
            calls.append(message.id)
            if len(calls) == 2:  # the first renewal's "typing..." call hangs (a slow channel API)
                hook_release.wait(30)

        def lapsed() -> bool:
            with engine.begin() as conn:
                return conn.exec_driver_sql(
                    "SELECT lease_expires_at <= now() FROM conversation_states WHERE device_id = %(d)s",
                    {"d": DEVICE},
                ).scalar()

        pipeline = pipeline_with(engine, database_url, {"manager": gate}, lease_seconds=1)
        try:
            with ThreadPoolExecutor(1) as pool:
                turn = pool.submit(aio.run, pipeline.handle, Inbound("default", DEVICE, "hello"), on_working=on_working)
                assert gate.entered.wait(10)
                wait_for(lambda: len(calls) >= 2 and lapsed(), 10)  # a live turn's lease never lapses
                aio.run(pipeline.drain, "default", DEVICE)  # the cron's recovery, or any waiter, meanwhile
                hook_release.set()
                gate.release.set()
                turn.result(timeout=60)
        finally:
            hook_release.set()
            gate.release.set()
        runs = [(m.text, m.attempt) for m in echo.seen]
        assert runs == [("hello", 1)], runs

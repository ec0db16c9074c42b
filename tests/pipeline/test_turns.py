"""Agent turns against real PostgreSQL: history, timeouts, attempts, answered handoffs, merged bursts."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.agents import AgentInput, AgentReply, Choice, Handoff
from app.agents.runner import FAILURE_REPLY
from app.errors import IdempotencyKeyReused
from app.pipeline import Inbound, Pipeline
from tests.conftest import make_settings
from tests.utils import aio
from tests.utils.agents import Gate, Scripted, wait_for
from tests.utils.counting import count_statements, work
from tests.utils.states import row

DEVICE = "0b7e7f7e-2222-4c4c-9d9d-000000000001"
OTHER = "0b7e7f7e-2222-4c4c-9d9d-000000000002"


class Echo:
    """Echoes the history it saw, and counts its calls."""

    def __init__(self) -> None:
        self.seen: list[AgentInput] = []

    def handle(self, message: AgentInput) -> AgentReply:
        self.seen.append(message)
        return AgentReply(f"re: {message.text}")


def pipeline_with(engine, database_url, registry, **overrides) -> Pipeline:
    return Pipeline(engine, registry, make_settings(database_url, **overrides))


def send(pipeline: Pipeline, text: str, device: str = DEVICE, on_reply=None, **kwargs):
    return aio.run(pipeline.handle, Inbound("default", device, text, **kwargs), on_reply=on_reply)


def inbound_rows(engine, device: str = DEVICE) -> list:
    with engine.begin() as conn:
        return conn.exec_driver_sql(
            "SELECT id, content, status, has_error, error_message, attempts, merged_into FROM conversation_messages "
            "WHERE device_id = %(d)s AND role = 'user' ORDER BY id",
            {"d": device},
        ).all()


def replies(engine, device: str = DEVICE) -> list:
    with engine.begin() as conn:
        return conn.exec_driver_sql(
            "SELECT id, content, reply_to, metadata FROM conversation_messages "
            "WHERE device_id = %(d)s AND role = 'assistant' ORDER BY id",
            {"d": device},
        ).all()


class TestHistory:
    def test_history_is_the_sessions_last_n_messages_oldest_first(self, engine, database_url):
        echo = Echo()
        pipeline = pipeline_with(engine, database_url, {"manager": echo}, agent_history_messages=3)
        for text in ("one", "two", "three"):
            send(pipeline, text)
        send(pipeline, "elsewhere", device=OTHER)
        send(pipeline, "four")
        seen = echo.seen[-1]
        assert seen.text == "four"
        assert [(h.role, h.content) for h in seen.history] == [
            ("assistant", "re: two"),
            ("user", "three"),
            ("assistant", "re: three"),
        ]
        assert [h.agent for h in seen.history] == ["manager"] * 3  # a user message names the agent it went to
        assert seen.history[0].created_at <= seen.history[1].created_at <= seen.history[2].created_at
        assert echo.seen[0].history == ()  # the first message of a session has none

    def test_history_never_crosses_sessions(self, engine, database_url, sessions):
        echo = Echo()
        pipeline = pipeline_with(engine, database_url, {"manager": echo})
        send(pipeline, "old session")
        sessions.start_new_session(DEVICE)
        send(pipeline, "new session")
        assert echo.seen[-1].history == ()
        send(pipeline, "again")
        assert [h.content for h in echo.seen[-1].history] == ["new session", "re: new session"]

    def test_zero_turns_history_off(self, engine, database_url):
        echo = Echo()
        pipeline = pipeline_with(engine, database_url, {"manager": echo}, agent_history_messages=0)
        send(pipeline, "one")
        send(pipeline, "two")
        assert echo.seen[-1].history == ()

    def test_a_queued_message_sees_the_reply_stored_after_it_arrived(self, engine, database_url):
        """The holder answers m2 from its finish statement, whose own reply to m1 joins m2's history."""
        echo = Echo()
        gate = Gate(echo, when=lambda m: m.text == "first")
        pipeline = pipeline_with(engine, database_url, {"manager": gate})
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(send, pipeline, "first")
            assert gate.entered.wait(10)
            second = pool.submit(send, pipeline, "second")
            assert wait_for(lambda: len(inbound_rows(engine)) == 2)
            gate.release.set()
            assert first.result().reply == "re: first" and second.result().reply == "re: second"
        assert [(h.role, h.content) for h in echo.seen[-1].history] == [("user", "first"), ("assistant", "re: first")]

    @pytest.mark.parametrize("history", [0, 20])
    def test_two_statements_per_message_on_a_free_device(self, engine, database_url, history):
        pipeline = pipeline_with(engine, database_url, {"manager": Echo()}, agent_history_messages=history)
        for text in ("one", "two", "three"):
            with count_statements(engine) as statements:
                send(pipeline, text)
            assert len(work(statements)) == 2, statements  # claim + finish


class TestTimeoutsAndAttempts:
    def test_a_turn_past_the_timeout_fails_for_good_and_its_late_result_is_dropped(self, engine, database_url):
        done = threading.Event()

        class Slow:
            calls = 0

            def handle(self, message: AgentInput) -> AgentReply:
                Slow.calls += 1
                time.sleep(2)  # the turn's work, longer than the timeout
                done.set()
                return AgentReply(
                    "too late", lock=Handoff("scheduling"), context={"conversation_state": {"late": True}}
                )

        registry = {"manager": Slow(), "scheduling": Scripted("scheduling")}
        pipeline = pipeline_with(engine, database_url, registry, agent_timeout_seconds=0.5, lease_seconds=1)
        result = send(pipeline, "hello")
        assert (result.reply, result.lock_agent) == (FAILURE_REPLY, None)
        [message] = inbound_rows(engine)
        assert (message.status, message.has_error) == ("failed", True)
        assert "AgentTimeout" in message.error_message
        assert done.wait(10)  # the agent returns after all
        state = row(engine, DEVICE)
        assert state["active_agent"] is None and "late" not in state["context"].get("conversation_state", {})
        assert [r.content for r in replies(engine)] == [FAILURE_REPLY]
        again = send(pipeline, "hello", external_id="k")  # a new message runs; the failed one never again
        assert Slow.calls == 2 and again.reply == FAILURE_REPLY
        assert [r.status for r in inbound_rows(engine)] == ["failed", "failed"]

    def test_a_crashed_holders_message_runs_again_with_attempt_two(self, engine, database_url):
        echo = Echo()
        pipeline = pipeline_with(engine, database_url, {"manager": echo})
        crashed = aio.run(pipeline.ledger.claim, "default", DEVICE, "lost", external_id=None, metadata={})
        assert crashed.lease.first.attempt == 1  # the holder started it, then died
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE conversation_states SET lease_expires_at = now() - interval '1 second'")
        assert aio.run(pipeline.drain, "default", DEVICE) == 1
        assert [(m.text, m.attempt) for m in echo.seen] == [("lost", 2)]
        assert [(r.status, r.attempts) for r in inbound_rows(engine)] == [("done", 2)]

    def test_after_max_attempts_the_message_fails_and_the_device_moves_on(self, engine, database_url):
        echo = Echo()
        pipeline = pipeline_with(engine, database_url, {"manager": echo}, agent_max_attempts=1)
        aio.run(pipeline.ledger.claim, "default", DEVICE, "poison", external_id=None, metadata={})
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE conversation_states SET lease_expires_at = now() - interval '1 second'")
        result = send(pipeline, "next")
        assert result.reply == "re: next"
        assert [m.text for m in echo.seen] == ["next"]  # the poison message never ran again
        rows = inbound_rows(engine)
        assert [(r.content, r.status) for r in rows] == [("poison", "failed"), ("next", "done")]
        assert "attempts" in rows[0].error_message
        assert [r.content for r in replies(engine)] == [FAILURE_REPLY, "re: next"]


def _unstorable_replies() -> dict:
    from app.context import ContextPatch

    nan, inf = float("nan"), float("inf")
    return {
        "nan in the patch": {"context": {"conversation_state": {"score": nan}}},
        "inf in a patch list": {"context": {"recent_interactions": [1, {"x": inf}]}},
        "-inf in a patch key's value": {"context": {"user_preferences": {"a": [-inf]}}},
        "unvalidated ContextPatch": {"context": ContextPatch.model_construct(conversation_state={"x": nan})},
        "nan in the reply metadata": {"metadata": {"usage": {"cost": nan}}},
    }


class TestUnstorableAgentOutput:
    @pytest.mark.parametrize("case", list(_unstorable_replies()))
    def test_the_turn_fails_with_the_failure_reply_and_the_device_is_free_at_once(self, engine, database_url, case):
        fields = _unstorable_replies()[case]

        class Poisoned:
            def handle(self, message: AgentInput) -> AgentReply:
                if message.text == "poison":
                    return AgentReply("fine", **fields)
                return AgentReply(f"re: {message.text}", context={"conversation_state": {"ok": 1}})

        # No waiting behind a busy device: a lease left held would answer "queued" at once.
        pipeline = pipeline_with(engine, database_url, {"manager": Poisoned()}, chat_wait_seconds=0)
        first = send(pipeline, "poison")
        assert (first.status, first.reply) == ("answered", FAILURE_REPLY)
        second = send(pipeline, "next")
        assert (second.status, second.reply) == ("answered", "re: next")
        rows = inbound_rows(engine)
        assert [(r.content, r.status, r.has_error) for r in rows] == [
            ("poison", "failed", True),
            ("next", "done", False),
        ]
        assert [r.content for r in replies(engine)] == [FAILURE_REPLY, "re: next"]
        assert row(engine, DEVICE)["context"]["conversation_state"] == {"ok": 1}


class TestAnsweredHandoff:
    def test_the_receiving_agent_is_not_run_again(self, engine, database_url):
        billing = Scripted("billing")

        class Manager:
            def handle(self, message: AgentInput) -> AgentReply:
                return AgentReply("What is the invoice number?", lock=Handoff("billing", answered=True))

        pipeline = pipeline_with(engine, database_url, {"manager": Manager(), "billing": billing})
        result = send(pipeline, "pay my bill")
        assert (result.reply, result.agent, result.lock_agent) == ("What is the invoice number?", "billing", "billing")
        assert billing.seen == []
        assert send(pipeline, "INV-1").reply == "billing: INV-1"


class TestChoices:
    def test_choices_are_returned_and_stored_with_the_reply(self, engine, database_url):
        class Asks:
            def handle(self, message: AgentInput) -> AgentReply:
                return AgentReply("Confirm?", choices=[Choice("yes", "Yes"), Choice("no", "No")])

        pipeline = pipeline_with(engine, database_url, {"manager": Asks()})
        result = send(pipeline, "book")
        assert result.choices == ({"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"})
        assert replies(engine)[0].metadata["choices"] == [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]
        again = send(pipeline, "book", external_id="same")
        assert send(pipeline, "book", external_id="same").choices == again.choices  # a duplicate gets them too


class TestMergedBursts:
    def test_messages_queued_behind_a_slow_turn_are_answered_by_one_turn(self, engine, database_url):
        echo = Echo()
        gate = Gate(echo, when=lambda m: m.text == "hi")
        pipeline = pipeline_with(engine, database_url, {"manager": gate}, burst_mode="merge")
        delivered = []
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(send, pipeline, "hi", on_reply=lambda m, a: delivered.append((m.id, a.reply)))
            assert gate.entered.wait(10)
            waiting = []
            for text in ("I need", "to book", "a visit"):  # stored in this order
                waiting.append(pool.submit(send, pipeline, text))
                stored = len(waiting) + 1
                assert wait_for(lambda stored=stored: len(inbound_rows(engine)) == stored)
            gate.release.set()
            results = [first.result()] + [future.result() for future in waiting]
        assert [m.messages for m in echo.seen] == [("hi",), ("I need", "to book", "a visit")]
        assert echo.seen[1].text == "I need\nto book\na visit"
        assert [r.reply for r in results] == ["re: hi"] + ["re: I need\nto book\na visit"] * 3
        assert [r.merged for r in results] == [False, True, True, True]
        rows = inbound_rows(engine)
        assert [r.status for r in rows] == ["done"] * 4
        assert [r.merged_into for r in rows] == [None, rows[3].id, rows[3].id, None]
        stored = replies(engine)
        assert [(r.content, r.reply_to) for r in stored] == [
            ("re: hi", rows[0].id),
            ("re: I need\nto book\na visit", rows[3].id),
        ]
        assert [reply for _, reply in delivered] == ["re: hi", "re: I need\nto book\na visit"]  # each sent once

    def test_each_mode_answers_every_message_on_its_own(self, engine, database_url):
        echo = Echo()
        gate = Gate(echo, when=lambda m: m.text == "hi")
        pipeline = pipeline_with(engine, database_url, {"manager": gate})
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(send, pipeline, "hi")
            assert gate.entered.wait(10)
            second = pool.submit(send, pipeline, "a")
            assert wait_for(lambda: len(inbound_rows(engine)) == 2)
            third = pool.submit(send, pipeline, "b")
            assert wait_for(lambda: len(inbound_rows(engine)) == 3)
            gate.release.set()
            assert [f.result().reply for f in (first, second, third)] == ["re: hi", "re: a", "re: b"]
        assert [m.messages for m in echo.seen] == [("hi",), ("a",), ("b",)]


class TestIdempotency:
    def test_a_key_reused_with_another_text_is_refused_and_changes_nothing(self, engine, database_url):
        pipeline = pipeline_with(engine, database_url, {"manager": Echo()})
        first = send(pipeline, "book friday", external_id="web:k1")
        before = row(engine, DEVICE)
        with pytest.raises(IdempotencyKeyReused):
            send(pipeline, "book monday", external_id="web:k1")
        assert row(engine, DEVICE)["version"] == before["version"]
        assert [r.content for r in inbound_rows(engine)] == ["book friday"]
        again = send(pipeline, "book friday", external_id="web:k1")
        assert (again.reply, again.duplicate) == (first.reply, True)

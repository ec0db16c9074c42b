"""Operator takeover through the admin API: the human lock, held messages, operator replies, release."""

from __future__ import annotations

import threading
import uuid

import pytest

from app.agents import load_registry
from app.errors import ConfigurationError
from app.pipeline import Pipeline
from tests.sessions.conftest import A, B
from tests.utils import aio
from tests.utils.agents import Gate, Scripted
from tests.utils.apps import use_registry
from tests.utils.factories import make_message, make_state, scalar, snapshot

TENANT = "acme"


@pytest.fixture
def manager():
    return Scripted("manager")


@pytest.fixture
def bot(client, manager):
    """The app's agents: a manager that counts what it answers, and a scheduling agent."""
    use_registry(client, {"manager": manager, "scheduling": Scripted("scheduling")})
    return client


def device() -> str:
    return str(uuid.uuid4())


def chat(client, dev: str, text: str):
    return client.post("/api/chat", json={"message": text}, headers={"X-Device-ID": dev, "X-Tenant-ID": TENANT})


def take(client, dev: str, operator: str = "Ana", headers=A, **body):
    return client.post(f"/api/sessions/{dev}/takeover", json={"operator": operator, **body}, headers=headers)


def release(client, dev: str, headers=A, **body):
    return client.request("DELETE", f"/api/sessions/{dev}/takeover", json=body or None, headers=headers)


def say(client, dev: str, text: str, headers=A):
    return client.post(f"/api/sessions/{dev}/messages", json={"text": text}, headers=headers)


def messages(engine, dev: str) -> list[tuple]:
    with engine.begin() as conn:
        return [
            tuple(r)
            for r in conn.exec_driver_sql(
                "SELECT role, content, agent, status, reply_to FROM conversation_messages WHERE device_id = %(d)s "
                "ORDER BY id",
                {"d": dev},
            ).all()
        ]


def snapshot_row(engine, dev: str) -> tuple:
    with engine.begin() as conn:
        return tuple(
            conn.exec_driver_sql(
                "SELECT active_agent, locked_at, extract(epoch FROM expires_at - now()), context "
                "FROM conversation_states WHERE device_id = %(d)s",
                {"d": dev},
            ).one()
        )


def audit(engine, dev: str) -> list[tuple]:
    with engine.begin() as conn:
        return [
            tuple(r)
            for r in conn.exec_driver_sql(
                "SELECT event, from_agent, to_agent FROM conversation_audit WHERE device_id = %(d)s ORDER BY id",
                {"d": dev},
            ).all()
        ]


class TestTakeover:
    @pytest.mark.parametrize(
        ("agent", "lock_seconds", "previous"),
        [(None, 600, None), ("scheduling", 600, "scheduling"), ("scheduling", -5, None), ("human", 600, "human")],
        ids=["no-lock", "agent-lock", "expired-lock", "already-human"],
    )
    def test_from_each_lock_state(self, bot, engine, agent, lock_seconds, previous):
        dev = device()
        make_state(engine, dev, TENANT, agent=agent, lock_seconds=lock_seconds)
        response = take(bot, dev, "Ana", ttl=900)
        assert response.status_code == 200, response.text
        lock = response.json()
        assert (lock["agent"], lock["operator"], lock["previous_agent"], lock["held"]) == ("human", "Ana", previous, 0)
        left = scalar(
            engine,
            "SELECT extract(epoch FROM expires_at - now()) FROM conversation_states WHERE device_id = %(d)s",
            d=dev,
        )
        assert 880 < left <= 900
        assert scalar(engine, "SELECT operator FROM conversation_states WHERE device_id = %(d)s", d=dev) == "Ana"
        assert audit(engine, dev) == [("takeover", previous, "human")]
        detail = bot.get(f"/api/sessions/{dev}", headers=A).json()
        assert (detail["lock"]["agent"], detail["lock"]["operator"], detail["status"]) == ("human", "Ana", "active")

    def test_default_ttl_is_an_hour_and_bad_bodies_change_nothing(self, bot, engine):
        dev = device()
        make_state(engine, dev, TENANT)
        before = snapshot(engine)
        for body in (
            {"operator": ""},
            {"operator": "Ana", "ttl": 0},
            {"operator": "Ana", "ttl": 2592001},
            {"operator": "Ana", "extra": 1},
            {},
        ):
            response = bot.post(f"/api/sessions/{dev}/takeover", json=body, headers=A)
            assert response.status_code == 422, body
        assert snapshot(engine) == before
        take(bot, dev)
        left = scalar(
            engine,
            "SELECT extract(epoch FROM expires_at - now()) FROM conversation_states WHERE device_id = %(d)s",
            d=dev,
        )
        assert 3590 < left <= 3600

    def test_pending_messages_are_held_at_the_takeover(self, bot, engine, manager):
        dev = device()
        make_state(engine, dev, TENANT)
        waiting = make_message(engine, dev, TENANT, content="are you there?", status="pending")
        assert take(bot, dev).json()["held"] == 1
        assert messages(engine, dev) == [("user", "are you there?", None, "held", None)]
        # The cleanup run's crash recovery does not answer it either.
        assert aio.run(Pipeline(engine, {"manager": manager}, bot.services.settings).recover) == 0
        assert (
            manager.seen == []
            and scalar(engine, "SELECT status FROM conversation_messages WHERE id = %(i)s", i=waiting) == "held"
        )

    def test_a_turn_in_flight_is_asked_to_stop_and_a_release_with_answer_held_withdraws_it(self, bot, engine):
        # A started turn (its attempt counted) with the draft its writer made: the takeover marks it to stop,
        # as POST /api/chat/stop would; the release that has the bot answer the message again withdraws
        # that, or the new turn would stop at its first write.
        dev = device()
        make_state(engine, dev, TENANT)
        running = make_message(engine, dev, TENANT, content="slow question", status="pending")
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE conversation_messages SET attempts = 1 WHERE id = %(i)s", {"i": running})
            # The stopped turn still holds the lease (it has yet to finish): the release's drain runs nothing.
            conn.exec_driver_sql(
                "UPDATE conversation_states SET lease_epoch = 1, lease_expires_at = now() + interval '10 minutes' "
                "WHERE device_id = %(d)s",
                {"d": dev},
            )
            conn.exec_driver_sql(
                "INSERT INTO conversation_drafts (tenant_id, device_id, epoch, attempt, message_ids, text) "
                "VALUES (%(t)s, %(d)s, 1, 1, ARRAY[%(i)s]::bigint[], 'half a rep')",
                {"t": TENANT, "d": dev, "i": running},
            )
        draft = "SELECT stop_message_id FROM conversation_drafts WHERE device_id = %(d)s"
        assert take(bot, dev).json()["held"] == 1
        assert scalar(engine, draft, d=dev) == running
        released = release(bot, dev, answer_held=True)
        assert (released.status_code, released.json()["answered"]) == (200, 0)
        assert scalar(engine, draft, d=dev) is None
        assert scalar(engine, "SELECT status FROM conversation_messages WHERE id = %(i)s", i=running) == "pending"

    def test_a_takeover_with_no_turn_in_flight_asks_no_stop(self, bot, engine):
        dev = device()
        make_state(engine, dev, TENANT)
        make_message(engine, dev, TENANT, content="waiting", status="pending")  # not started: attempts 0
        assert take(bot, dev).json()["held"] == 1
        assert scalar(engine, "SELECT count(*) FROM conversation_drafts WHERE device_id = %(d)s", d=dev) == 0


class TestHeldMessages:
    def test_web_messages_are_stored_held_and_no_agent_runs(self, bot, engine, manager):
        dev = device()
        assert chat(bot, dev, "hi").json()["agent"] == "manager"
        take(bot, dev)
        response = chat(bot, dev, "I want a person")
        assert response.status_code == 200
        body = response.json()
        assert body["reply"] is None and body["agent"] == "human"
        assert body["lock"]["agent"] == "human" and body["lock"]["expires_at"]
        assert [m.text for m in manager.seen] == ["hi"]
        assert messages(engine, dev)[2:] == [("user", "I want a person", None, "held", None)]
        # A retry with the same idempotency key stores nothing and is still held.
        headers = {"X-Device-ID": dev, "X-Tenant-ID": TENANT, "Idempotency-Key": "k1"}
        first = bot.post("/api/chat", json={"message": "again"}, headers=headers).json()
        again = bot.post("/api/chat", json={"message": "again"}, headers=headers).json()
        assert first["reply"] is None and again["reply"] is None and again["agent"] == "human"
        assert len(messages(engine, dev)) == 4 and len(manager.seen) == 1

    def test_a_turn_taken_over_while_the_agent_thinks_stores_no_reply(self, bot, engine, manager):
        gate = Gate(manager)
        use_registry(bot, {"manager": gate})
        dev = device()
        results = []
        worker = threading.Thread(target=lambda: results.append(chat(bot, dev, "slow question")))
        worker.start()
        assert gate.entered.wait(10)
        take(bot, dev)
        gate.release.set()
        worker.join(30)
        body = results[0].json()
        assert (body["reply"], body["agent"], body["lock"]["agent"]) == (None, "human", "human")
        assert messages(engine, dev) == [("user", "slow question", None, "held", None)]
        assert audit(engine, dev) == [("takeover", None, "human")]


class TestOperatorReplies:
    def test_reply_is_stored_linked_shown_to_the_web_device_and_slides_the_lock(self, bot, engine):
        dev = device()
        chat(bot, dev, "hi")
        take(bot, dev, "Ana", ttl=600)
        chat(bot, dev, "first")
        held = chat(bot, dev, "second")
        assert held.json()["reply"] is None
        latest_held = scalar(engine, "SELECT max(id) FROM conversation_messages WHERE status = 'held'")
        with engine.begin() as conn:  # as if the takeover had been a while ago
            conn.exec_driver_sql("UPDATE conversation_states SET expires_at = now() + interval '10 seconds'")
        response = say(bot, dev, "Hello, Ana here. How can I help?")
        assert response.status_code == 201, response.text
        stored = response.json()
        assert (stored["role"], stored["agent"], stored["operator"], stored["reply_to"], stored["channel"]) == (
            "assistant",
            "human",
            "Ana",
            latest_held,
            "web",
        )
        left = scalar(engine, "SELECT extract(epoch FROM expires_at - now()) FROM conversation_states")
        assert 590 < left <= 600
        assert (
            scalar(engine, "SELECT metadata ->> 'operator' FROM conversation_messages WHERE id = %(i)s", i=stored["id"])
            == "Ana"
        )
        page = bot.get("/api/chat/messages", headers={"X-Device-ID": dev, "X-Tenant-ID": TENANT}).json()
        newest = page["items"][0]
        assert (newest["id"], newest["content"], newest["agent"], newest["reply_to"]) == (
            stored["id"],
            "Hello, Ana here. How can I help?",
            "human",
            latest_held,
        )

    def test_without_a_live_human_lock_is_409_and_stores_nothing(self, bot, engine):
        dev = device()
        chat(bot, dev, "hi")
        before = snapshot(engine)
        response = say(bot, dev, "hello")
        assert response.status_code == 409 and response.json()["error"]["code"] == "not_taken_over"
        take(bot, dev)
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE conversation_states SET expires_at = now() - interval '1 second'")
        before = snapshot(engine)
        assert say(bot, dev, "hello").json()["error"]["code"] == "not_taken_over"
        assert snapshot(engine) == before

    def test_bad_bodies_are_422(self, bot, engine):
        dev = device()
        make_state(engine, dev, TENANT)
        take(bot, dev)
        before = snapshot(engine)
        for body in (
            {},
            {"text": ""},
            {"text": "x" * 4097},
            {"text": "a", "template": {"name": "t"}},
            {"text": "a\x00b"},
            {"template": {"name": "Bad Name"}},
            {"template": {"name": "t", "components": [{"type": "body", "text": "a\x00"}]}},
        ):
            response = bot.post(f"/api/sessions/{dev}/messages", json=body, headers=A)
            assert response.status_code == 422, body
        lone = bot.post(
            f"/api/sessions/{dev}/messages",
            content=b'{"text": "lone \\ud800"}',
            headers={**A, "Content-Type": "application/json"},
        )
        assert lone.status_code == 422, lone.text
        response = bot.post(f"/api/sessions/{dev}/messages", json={"template": {"name": "hello_world"}}, headers=A)
        assert response.status_code == 422 and response.json()["error"]["code"] == "template_needs_whatsapp"
        assert snapshot(engine) == before


class TestHandBack:
    def test_ttl_expiry_returns_the_conversation_to_the_bot(self, bot, engine, manager):
        dev = device()
        chat(bot, dev, "hi")
        take(bot, dev, ttl=60)
        assert chat(bot, dev, "held one").json()["reply"] is None
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE conversation_states SET expires_at = now() - interval '1 second'")
        answer = chat(bot, dev, "anyone?").json()
        assert (answer["reply"], answer["agent"]) == ("manager: anyone?", "manager")
        assert [m.text for m in manager.seen] == ["hi", "anyone?"]
        assert scalar(engine, "SELECT status FROM conversation_messages WHERE content = 'held one'") == "held"

    def test_release_with_agent_null_sends_the_next_message_to_the_manager_and_leaves_held_ones(
        self, bot, engine, manager
    ):
        dev = device()
        make_state(engine, dev, TENANT, agent="scheduling")
        take(bot, dev)
        chat(bot, dev, "held one")
        response = release(bot, dev, agent=None)
        assert response.status_code == 200, response.text
        assert response.json() == {**response.json(), "agent": None, "previous_agent": "human", "answered": 0}
        assert audit(engine, dev) == [("takeover", "scheduling", "human"), ("release", "human", None)]
        assert chat(bot, dev, "next").json()["agent"] == "manager"
        assert [m.text for m in manager.seen] == ["next"]
        assert scalar(engine, "SELECT status FROM conversation_messages WHERE content = 'held one'") == "held"
        again = release(bot, dev)
        assert again.status_code == 409 and again.json()["error"]["code"] == "not_taken_over"

    def test_release_gives_the_lock_back_to_the_agent_the_takeover_displaced(self, bot, engine, manager):
        dev = device()
        make_state(
            engine,
            dev,
            TENANT,
            agent="scheduling",
            lock_seconds=1200,
            locked_ago=300,
            context={"conversation_state": {"day": "tomorrow"}},
        )
        locked_at = scalar(engine, "SELECT locked_at FROM conversation_states WHERE device_id = %(d)s", d=dev)
        take(bot, dev)
        with engine.begin() as conn:  # the person held it for ten minutes: that time is not the agent's
            conn.exec_driver_sql("UPDATE conversation_states SET locked_at = locked_at - interval '10 minutes'")
        context = scalar(engine, "SELECT context FROM conversation_states WHERE device_id = %(d)s", d=dev)
        response = release(bot, dev)
        assert response.status_code == 200, response.text
        assert response.json()["agent"] == "scheduling"
        row = dict(zip(("agent", "locked_at", "left", "context"), snapshot_row(engine, dev), strict=True))
        assert (row["agent"], row["locked_at"], row["context"]) == ("scheduling", locked_at, context)
        assert 1190 < row["left"] <= 1200
        assert audit(engine, dev) == [("takeover", "scheduling", "human"), ("release", "human", "scheduling")]
        answer = chat(bot, dev, "tomorrow").json()
        assert (answer["agent"], answer["reply"]) == ("scheduling", "scheduling: tomorrow")
        assert manager.seen == []

    def test_release_to_another_agent_or_an_unknown_one(self, bot, engine, manager):
        dev = device()
        make_state(engine, dev, TENANT, agent="scheduling", session_ttl=900)
        take(bot, dev)
        before = snapshot(engine)
        refused = release(bot, dev, agent="billing")
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "unknown_agent"
        assert release(bot, dev, agent="Bad Key").status_code == 422
        assert snapshot(engine) == before
        assert release(bot, dev, agent="manager").json()["agent"] == "manager"
        left = scalar(
            engine,
            "SELECT extract(epoch FROM expires_at - now()) FROM conversation_states WHERE device_id = %(d)s",
            d=dev,
        )
        assert 890 < left <= 900
        assert chat(bot, dev, "hello").json()["agent"] == "manager"

    def test_a_takeover_without_an_agent_lock_hands_back_to_none(self, bot, engine, manager):
        dev = device()
        make_state(engine, dev, TENANT)
        take(bot, dev)
        take(bot, dev, "Ben")  # a takeover of a takeover keeps what the first displaced
        assert release(bot, dev).json()["agent"] is None
        assert chat(bot, dev, "hi").json()["agent"] == "manager"

    def test_answer_held_answers_only_what_the_operator_did_not(self, bot, engine, manager):
        dev = device()
        make_state(engine, dev, TENANT, agent="scheduling")
        take(bot, dev)
        chat(bot, dev, "one")
        chat(bot, dev, "two")
        say(bot, dev, "I answered one and two")
        chat(bot, dev, "three")
        response = release(bot, dev, answer_held=True)
        assert response.status_code == 200 and response.json()["answered"] == 1
        users = [(r[1], r[3]) for r in messages(engine, dev) if r[0] == "user"]
        assert users == [("one", "done"), ("two", "done"), ("three", "done")]
        bot_replies = [r[1] for r in messages(engine, dev) if r[0] == "assistant" and r[2] != "human"]
        assert bot_replies == ["scheduling: three"]

    def test_release_with_answer_held_answers_them_in_order(self, bot, engine, manager):
        dev = device()
        chat(bot, dev, "hi")
        take(bot, dev)
        say(bot, dev, "let me check")  # before them: it answers none of them
        for text in ("one", "two", "three"):
            chat(bot, dev, text)
        response = release(bot, dev, answer_held=True)
        assert response.status_code == 200 and response.json()["answered"] == 3
        assert [m.text for m in manager.seen] == ["hi", "one", "two", "three"]
        rows = messages(engine, dev)
        assert [(r[0], r[1], r[3]) for r in rows if r[0] == "user"] == [
            ("user", "hi", "done"),
            ("user", "one", "done"),
            ("user", "two", "done"),
            ("user", "three", "done"),
        ]
        replies = {r[4]: r[1] for r in rows if r[0] == "assistant" and r[2] == "manager"}
        ids = {r[1]: i for i, r in enumerate(rows)}
        assert sorted(replies.values()) == ["manager: hi", "manager: one", "manager: three", "manager: two"]
        assert ids["manager: one"] < ids["manager: two"] < ids["manager: three"]


class TestTenantsAndRegistry:
    def test_another_tenants_key_gets_404_everywhere(self, bot, engine):
        dev = device()
        chat(bot, dev, "hi")
        before = snapshot(engine)
        assert take(bot, dev, headers=B).status_code == 404
        assert release(bot, dev, headers=B).status_code == 404
        assert say(bot, dev, "hello", headers=B).status_code == 404
        assert snapshot(engine) == before
        take(bot, dev)
        before = snapshot(engine)
        for response in (take(bot, dev, headers=B), release(bot, dev, headers=B), say(bot, dev, "x", headers=B)):
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        assert snapshot(engine) == before
        assert take(bot, dev, headers={}).status_code == 401

    def test_human_is_refused_as_a_registry_key(self):
        with pytest.raises(ConfigurationError, match="human"):
            load_registry("tests.sessions.agents:with_human")

"""BURST_MODE=interrupt: a device's new message stops its streamed turn in flight, and one turn answers
what is pending with the stopped partial reply in the history the agent sees."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from app.agents import AgentInput, StreamItem
from app.ledger import Ledger, Outcome
from app.streams.writer import interrupt
from tests.conftest import make_settings
from tests.streams.test_stream_api import body, stored
from tests.utils import aio
from tests.utils.apps import app_client, use_registry
from tests.utils.sse import DONE, parts
from tests.utils.stream_agents import Streamer


class Recording(Streamer):
    """The stream test agent, noting what each of its turns saw."""

    def __init__(self) -> None:
        super().__init__("manager")
        self.seen: list[AgentInput] = []

    async def stream(self, message: AgentInput) -> AsyncIterator[StreamItem]:
        self.seen.append(message)
        async for item in super().stream(message):
            yield item


def test_a_message_sent_mid_stream_stops_the_turn_and_the_next_turn_sees_both(database_url, engine, gates):
    agent = Recording()
    device = str(uuid.uuid4())
    headers = {"X-Device-ID": device}
    settings = make_settings(database_url, burst_mode="interrupt", chat_wait_seconds=10)
    with app_client(settings) as client:
        use_registry(client, {"manager": agent})
        with client.stream("POST", "/api/chat/stream", json=body("hold never w1 w2 w3"), headers=headers) as r:
            items = parts(r)
            first = next(item for item in items if item["type"] == "text-delta")
            assert first["delta"] == "w1 "  # the first turn streams, held at its gate (never opened)
            answer = client.post("/api/chat", json={"message": "no wait, something else"}, headers=headers)
            rest = list(items)
    assert answer.status_code == 200
    assert answer.json()["reply"] == "no wait, something else"
    statuses = [item["data"]["status"] for item in rest if item["type"] == "data-status"]
    assert statuses == ["stopped"] and rest[-1] == DONE
    assert sorted(stored(engine, device)) == sorted(
        [
            ("user", "hold never w1 w2 w3", False),
            ("assistant", "w1 ", True),
            ("user", "no wait, something else", False),
            ("assistant", "no wait, something else", False),
        ]
    )
    # One more turn, and it saw both messages: the new one, after the first and its stopped partial reply.
    assert len(agent.seen) == 2
    second = agent.seen[1]
    assert second.messages == ("no wait, something else",)
    assert [(item.role, item.content, item.stopped) for item in second.history] == [
        ("user", "hold never w1 w2 w3", False),
        ("assistant", "w1 ", True),
    ]


def test_the_interrupt_targets_only_a_turn_in_flight_without_the_new_message(database_url, engine):
    ledger = Ledger(engine, lease_seconds=30, default_ttl=60, context_cap=20, batch=10)
    device = str(uuid.uuid4())

    def claim(text: str):
        return aio.run(ledger.claim, "default", device, text, external_id=None, metadata={})

    first, second = claim("first"), claim("second")
    assert first.lease is not None and second.lease is None
    assert aio.run(interrupt, engine, "default", device, second.message_id) == first.message_id
    # The first turn finishes; the next one takes the second message in: nothing left to interrupt for it.
    outcome = Outcome("a reply", "manager", None, None, None, {}, [], 1)
    finished = aio.run(ledger.finish, first.lease, first.lease.first, outcome)
    assert [message.id for message in finished.next.messages] == [second.message_id]
    assert aio.run(interrupt, engine, "default", device, second.message_id) is None
    # A third message stops the second's turn.
    third = claim("third")
    assert aio.run(interrupt, engine, "default", device, third.message_id) == second.message_id

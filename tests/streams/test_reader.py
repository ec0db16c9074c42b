"""The stream reader (app/streams/reader.py) against interleavings a server makes only by chance."""

from __future__ import annotations

import json
import time

import anyio

from app.core.engine import make_engine
from app.streams import reader
from app.streams.hub import Hub
from app.streams.reader import Follower
from tests.conftest import make_settings
from tests.utils import aio
from tests.utils.factories import make_message, make_state
from tests.utils.proxy import outage_proxy

DEVICE = "+15550001111"
KEY = ("default", DEVICE)


def answer(engine, asked: int) -> None:
    """What a finish stores: the reply, and the message marked done."""
    make_message(engine, DEVICE, role="assistant", content="the stored reply", agent="manager", reply_to=asked)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE conversation_messages SET status = 'done' WHERE id = %(id)s", {"id": asked})


def parts(body: list[str]) -> list[dict]:
    return [
        json.loads(line[len("data: ") :]) for chunk in body for line in chunk.splitlines() if line.startswith("data: {")
    ]


def test_a_reader_at_shutdown_reads_the_reply_stored_after_its_read_by_a_drain_of_this_process(engine):
    # The interleaving CI met: the reader's READ finds the message pending; the turn's finish then
    # stores the reply and its drain ends (the hold goes); then the reader looks at the stopping
    # server. Ending there would close the stream with data-status queued and no reply.
    make_state(engine, DEVICE)
    asked = make_message(engine, DEVICE, content="hi", status="pending")
    hub = Hub()
    drain = hub.holding(KEY)
    drain.__enter__()
    hub.stop()

    class FinishedDuringTheRead(Follower):
        steps = 0

        async def _step(self):
            step = await super()._step()
            FinishedDuringTheRead.steps += 1
            if FinishedDuringTheRead.steps == 1:
                assert step == ("", None)  # the READ saw the message pending
                await anyio.to_thread.run_sync(answer, engine, asked)
                drain.__exit__(None, None, None)
            return step

    async def follow() -> list[str]:
        reader = FinishedDuringTheRead(
            engine, hub, "default", DEVICE, asked, poll_seconds=30.0, deadline=time.monotonic() + 60
        )
        with anyio.fail_after(20):  # a reader that waited for a poll would take 30 s
            return [chunk async for chunk in reader.parts()]

    items = parts(aio.run(follow))
    statuses = [item["data"]["status"] for item in items if item["type"] == "data-status"]
    text = "".join(item["delta"] for item in items if item["type"] == "text-delta")
    assert statuses == [] and text == "the stored reply" and items[-1]["type"] == "finish", items
    assert FinishedDuringTheRead.steps == 2


def test_a_reader_at_shutdown_of_a_device_not_held_here_ends_queued(engine):
    make_state(engine, DEVICE)
    asked = make_message(engine, DEVICE, content="hi", status="pending")
    hub = Hub()
    hub.stop()

    async def follow() -> list[str]:
        reader = Follower(engine, hub, "default", DEVICE, asked, poll_seconds=30.0, deadline=time.monotonic() + 60)
        with anyio.fail_after(20):
            return [chunk async for chunk in reader.parts()]

    items = parts(aio.run(follow))
    assert [item["data"]["status"] for item in items if item["type"] == "data-status"] == ["queued"], items


def test_a_reader_keeps_following_through_a_database_outage_and_ends_with_the_stored_reply(
    engine, database_url, monkeypatch
):
    # The turn's finish is retried while its lease lasts; a reader that met the outage ended the
    # response mid-stream (an unhandled StoreUnavailable), and the page showed an error for a reply
    # that was then stored.
    monkeypatch.setattr(reader, "OUTAGE_POLL_SECONDS", 0.05)
    make_state(engine, DEVICE)
    asked = make_message(engine, DEVICE, content="hi", status="pending")
    with outage_proxy(database_url) as proxy:
        through = make_engine(make_settings(proxy.url, db_connect_timeout=2))
        proxy.down()

        class ThroughAnOutage(Follower):
            failed = 0

            async def _step(self):
                step = await super()._step()
                if self._store_down and not ThroughAnOutage.failed:
                    ThroughAnOutage.failed += 1
                    assert step == ("", None)
                    await anyio.to_thread.run_sync(answer, engine, asked)  # the finish, retried, got through
                    proxy.up()
                return step

        async def follow() -> list[str]:
            follower = ThroughAnOutage(
                through, Hub(), "default", DEVICE, asked, poll_seconds=0.01, deadline=time.monotonic() + 60
            )
            with anyio.fail_after(20):
                return [chunk async for chunk in follower.parts()]

        try:
            items = parts(aio.run(follow))
        finally:
            aio.close_pools(through)
            through.dispose()

    assert ThroughAnOutage.failed == 1
    text = "".join(item["delta"] for item in items if item["type"] == "text-delta")
    statuses = [item["data"]["status"] for item in items if item["type"] == "data-status"]
    assert statuses == [] and text == "the stored reply" and items[-1]["type"] == "finish", items

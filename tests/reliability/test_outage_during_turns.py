"""The database cut and restored while turns run: each turn is answered once, by its own finish
(retried through the outage), and every device answers normally afterwards."""

from __future__ import annotations

import re
import uuid

import anyio
import httpx
import pytest

from app.core.engine import make_engine
from app.errors import StoreUnavailable
from app.pipeline import Inbound, Pipeline
from tests.conftest import make_settings
from tests.reliability.ledger_checks import check_device, duplicated_contents, stored_messages
from tests.utils import aio
from tests.utils.agents import wait_for
from tests.utils.chat_at_once import CLIENT_SECONDS, Responses, post_all
from tests.utils.gate import gate
from tests.utils.proxy import OutageProxy, outage_proxy
from tests.utils.server import app_env, serving
from tests.utils.slow_agents import reply_to

pytestmark = pytest.mark.slow

SLOW_AGENTS = "tests.utils.slow_agents:registry"
RETRIED = re.compile(r"finishing the turn on message (\d+) failed, retrying")


def device_id(number: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"runtime/outage/{number}"))


def test_turns_cut_off_from_the_database_are_answered_once_and_devices_answer_normally_after(database_url, engine):
    devices = 10
    with gate() as turn_gate, outage_proxy(database_url) as proxy:
        # LEASE_SECONDS bounds the finish's retries: ample for this outage, which ends once every finish failed.
        env = app_env(proxy.url, agents=SLOW_AGENTS, db_connect_timeout=2, chat_wait_seconds=CLIENT_SECONDS)
        firsts = {device_id(n): f"dev{n} first gate={turn_gate.port}" for n in range(devices)}
        seconds = {device_id(n): f"dev{n} second" for n in range(devices)}
        with serving(env) as server:

            async def cut_while_turns_run(client: httpx.AsyncClient, responses: Responses) -> set[str]:
                assert await anyio.to_thread.run_sync(turn_gate.wait_arrived, devices)
                proxy.down()
                turn_gate.open()  # the agents answer; their finishes meet the outage

                def retried() -> set[str]:
                    return set(RETRIED.findall(server.log()))

                assert await anyio.to_thread.run_sync(wait_for, lambda: len(retried()) == devices, CLIENT_SECONDS)
                proxy.up()
                return retried()

            first, retried = aio.run(post_all, server.url, firsts, cut_while_turns_run)
            second, _ = aio.run(post_all, server.url, seconds)
            log = server.log()

    assert len(retried) == devices  # every turn's finish failed at least once
    for answers, texts in ((first, firsts), (second, seconds)):
        assert {device: r.status_code for device, r in answers.items()} == dict.fromkeys(texts, 200)
        bodies = {device: r.json() for device, r in answers.items()}
        assert not [device for device, body in bodies.items() if body["degraded"]]
        assert {device: body["reply"] for device, body in bodies.items()} == {
            device: f"slow: {text} attempt=1" for device, text in texts.items()
        }
    stored = stored_messages(engine)
    problems = {device: check_device(stored.get(device, []), [firsts[device], seconds[device]])[0] for device in firsts}
    assert not {device: p for device, p in problems.items() if p}
    assert duplicated_contents(engine) == {}
    assert "Traceback" not in log


class CutBeforeAnswering:
    """Cuts the database off as it answers a message with the word "cut", so that the finish meets the outage."""

    def __init__(self, proxy: OutageProxy) -> None:
        self.proxy = proxy

    async def handle(self, message):
        if "cut" in message.text.split():
            await anyio.to_thread.run_sync(self.proxy.down)
        return reply_to(message)


def test_a_finish_cut_off_by_a_disconnect_is_retried_and_the_next_message_is_not_queued(database_url, engine):
    device = device_id(100)
    with outage_proxy(database_url) as proxy:
        # A lease left held would keep the next message queued for LEASE_SECONDS (30) > CHAT_WAIT_SECONDS (2).
        settings = make_settings(proxy.url, db_connect_timeout=2, chat_wait_seconds=2)
        proxied = make_engine(settings)
        try:
            pipeline = Pipeline(proxied, {"manager": CutBeforeAnswering(proxy)}, settings)
            failures: list[StoreUnavailable] = []
            finish = pipeline.ledger.finish

            async def finish_then_restore(*args, **kwargs):
                try:
                    return await finish(*args, **kwargs)
                except StoreUnavailable as err:  # the first attempt met the outage: the database comes back
                    failures.append(err)
                    proxy.up()
                    raise

            pipeline.ledger.finish = finish_then_restore
            first = aio.run(pipeline.handle, Inbound("default", device, "first cut"))
            second = aio.run(pipeline.handle, Inbound("default", device, "second"))
        finally:
            proxied.dispose()

    assert len(failures) == 1
    assert (first.status, first.reply) == ("answered", "slow: first cut attempt=1")  # by its own, retried finish
    assert (second.status, second.reply) == ("answered", "slow: second attempt=1")
    problems, _ = check_device(stored_messages(engine)[device], ["first cut", "second"])
    assert problems == []

"""Requests that start a turn are admitted a few at a time, in order, and hold their place only
while they run on the loop (app/runtime.py: Admission, app/api/admission.py: Admit)."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import anyio
import httpx
import psycopg
from fastapi import Request
from sqlalchemy.engine import make_url

from app.api.deps import received_at
from app.runtime import Admission
from tests.channels import payloads
from tests.channels.payloads import whatsapp_settings
from tests.conftest import make_settings
from tests.utils import aio
from tests.utils.agents import wait_for
from tests.utils.apps import app_client, use_registry
from tests.utils.gate import gate
from tests.utils.server import app_env, running_app
from tests.utils.slow_agents import Slow

WAIT_SECONDS = 60.0  # a bound on the test, never a measure of speed


def libpq_url(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def device() -> dict[str, str]:
    return {"X-Device-ID": str(uuid.uuid4())}


class TestAdmission:
    def test_places_go_in_arrival_order(self):
        aio.run(self._arrival_order)

    async def _arrival_order(self):
        admission = Admission(1)
        release = await admission.admit()
        order: list[str] = []

        async def later(name: str) -> None:
            done = await admission.admit()
            order.append(name)
            done()

        async with anyio.create_task_group() as group:
            for name in ("b", "c", "d"):
                group.start_soon(later, name)
                await anyio.wait_all_tasks_blocked()  # queued before the next one arrives
            assert order == []  # the first still holds the only place
            release()
        assert order == ["b", "c", "d"]
        assert admission.admitted == 0

    def test_a_place_given_back_is_free_only_on_the_loops_next_pass(self):
        # So the requests a burst queued in this pass of the loop cannot take it, one after the other.
        aio.run(self._next_pass)

    async def _next_pass(self):
        admission = Admission(1)
        release = await admission.admit()
        release()
        release()  # given back once, whatever calls it again (the pipeline, then the response)
        assert admission.admitted == 1
        await anyio.lowlevel.checkpoint()
        assert admission.admitted == 0

    def test_a_request_cancelled_while_queued_leaves_no_hole(self):
        aio.run(self._cancelled)

    async def _cancelled(self):
        admission = Admission(1)
        release = await admission.admit()
        async with anyio.create_task_group() as group:
            group.start_soon(admission.admit)
            await anyio.wait_all_tasks_blocked()
            group.cancel_scope.cancel()
        release()
        with anyio.fail_after(WAIT_SECONDS):
            (await admission.admit())()  # the cancelled one neither holds the place nor blocks it
        await anyio.lowlevel.checkpoint()
        assert admission.admitted == 0


def test_a_turn_in_flight_holds_no_place(database_url):
    # One place: a turn whose agent is still thinking gave it back before its claim.
    with gate() as turn_gate, app_client(make_settings(database_url, admission_width=1)) as client:
        use_registry(client, {"manager": Slow()})
        first: dict[str, httpx.Response] = {}

        def post_first() -> None:
            first["response"] = client.post(
                "/api/chat", json={"message": f"first gate={turn_gate.port}"}, headers=device()
            )

        holder = threading.Thread(target=post_first)
        holder.start()
        assert turn_gate.wait_arrived(1, WAIT_SECONDS)
        second = client.post("/api/chat", json={"message": "second"}, headers=device())
        assert (second.status_code, second.json()["reply"]) == (200, "slow: second attempt=1")
        turn_gate.open()
        holder.join(WAIT_SECONDS)
    assert first["response"].json()["reply"].startswith("slow: first")


def test_a_refused_request_gives_its_place_back(database_url):
    with app_client(make_settings(database_url, admission_width=1)) as client:
        use_registry(client, {"manager": Slow()})
        statuses: list[int] = []

        def post_all() -> None:
            statuses.append(client.post("/api/chat", json={"message": ""}, headers=device()).status_code)
            statuses.append(client.post("/api/chat", json={"message": "hi"}, headers={}).status_code)
            statuses.append(client.post("/api/chat", json={"message": "hi"}, headers=device()).status_code)

        poster = threading.Thread(target=post_all)
        poster.start()
        poster.join(WAIT_SECONDS)
        assert not poster.is_alive(), "a refused request kept its place: the next one never ran"
    assert statuses == [422, 400, 200]


def test_a_body_still_arriving_holds_no_place(database_url):
    # A real server: a client sends its headers and part of its body, then nothing more.
    env = app_env(database_url, admission_width=1, agents="tests.utils.slow_agents:registry")
    with running_app(env) as server, socket.create_connection(("127.0.0.1", server.port)) as stalled:
        stalled.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 40\r\nX-Device-ID: " + str(uuid.uuid4()).encode() + b'\r\n\r\n{"message": "never fin'
        )
        with httpx.Client(base_url=server.url, timeout=WAIT_SECONDS) as http:
            # Sent after the stalled body's first bytes, on another connection: answered all the same.
            response = http.post("/api/chat", json={"message": "hello"}, headers=device())
        assert (response.status_code, response.json()["reply"]) == (200, "slow: hello attempt=1")


def test_a_webhook_waiting_on_the_database_holds_no_place(database_url, engine, graph):
    # A delivery's first statement is the erasure guard's lookup, before any device's claim:
    # blocked there (a slow or locked store), the webhook must not keep the only place.
    settings = whatsapp_settings(database_url, graph.url, admission_width=1)
    with app_client(settings) as client, psycopg.connect(libpq_url(database_url), autocommit=False) as blocker:
        use_registry(client, {"manager": Slow()})
        blocker.execute("LOCK TABLE erased_channel_messages IN ACCESS EXCLUSIVE MODE")
        answered: dict[str, httpx.Response] = {}
        delivery = payloads.delivery([payloads.change([payloads.text("hello", "wamid.admission-1")])])
        hook = threading.Thread(target=lambda: answered.setdefault("hook", payloads.post(client, delivery)))
        hook.start()
        with psycopg.connect(libpq_url(database_url), autocommit=True) as watcher:
            lock_waits = (
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'erased_channel_messages'::regclass"
            )
            assert wait_for(lambda: watcher.execute(lock_waits).fetchone()[0] > 0, WAIT_SECONDS)
        chat = client.post("/api/chat", json={"message": "meanwhile"}, headers=device())
        assert hook.is_alive(), "the chat was answered only once the webhook's statement was through"
        assert (chat.status_code, chat.json()["reply"]) == (200, "slow: meanwhile attempt=1")
        blocker.rollback()
        hook.join(WAIT_SECONDS)
    assert answered["hook"].status_code == 200


def test_a_webhooks_budget_starts_when_its_body_arrived_not_when_it_was_admitted(database_url, engine, graph):
    # WEBHOOK_ACK_SECONDS counts from receipt: a wait for a place is part of it.
    settings = whatsapp_settings(database_url, graph.url, admission_width=1)
    with app_client(settings) as client:
        use_registry(client, {"manager": Slow()})
        admission = client.services.runtime.admission
        seen: list[float] = []

        async def recording(request: Request) -> float:
            seen.append(await received_at(request))
            return seen[-1]

        client.app.dependency_overrides[received_at] = recording
        release = client.portal.call(admission.admit)  # the only place, held by the test
        delivery = payloads.delivery([payloads.change([payloads.text("hello", "wamid.admission-2")])])
        answered: dict[str, httpx.Response] = {}
        hook = threading.Thread(target=lambda: answered.setdefault("hook", payloads.post(client, delivery)))
        hook.start()
        assert wait_for(lambda: admission.admitted == 1 and len(admission._waiting) == 1, WAIT_SECONDS)
        queued_by = time.monotonic()  # the webhook's body had arrived: it waits for the place
        client.portal.call(release)
        hook.join(WAIT_SECONDS)
    assert answered["hook"].status_code == 200
    assert len(seen) == 1 and seen[0] <= queued_by  # read before the wait, not after it

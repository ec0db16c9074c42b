"""SIGTERM to `python -m app serve` during a turn: a short turn finishes and is answered; a turn longer
than SHUTDOWN_GRACE_SECONDS is cancelled, its client told so (503 `interrupted`), its lease given back,
and the next holder answers it once. An event stream open at SIGTERM ends at once: it does not hold
the shutdown for the grace period; a stream relaying a turn of the stopping process goes on with it."""

from __future__ import annotations

import signal
import threading

import httpx
import psycopg
import pytest

from app.core.engine import libpq_url
from app.pipeline import Pipeline
from tests.conftest import make_settings
from tests.reliability.ledger_checks import stored_messages
from tests.utils import aio, slow_agents
from tests.utils.agents import wait_for
from tests.utils.gate import gate
from tests.utils.server import app_env, running_app, serving
from tests.utils.sse import DONE, parts, text_of

pytestmark = pytest.mark.slow

DEVICE = "5e1d0c3b-7a6f-4e2d-9c8b-1a2b3c4d5e60"
SLOW_AGENTS = "tests.utils.slow_agents:registry"
WAIT_SECONDS = 60.0  # a bound on the test, never a measure of speed
# uvicorn ends a graceful shutdown by raising the signal it caught again: the process dies of SIGTERM.
STOPPED = (0, -signal.SIGTERM)
ADMIN_KEY = "graceful-shutdown-admin-key-5c20e1"


def post_in_thread(url: str, text: str) -> tuple[threading.Thread, dict]:
    """POST the device's message from a thread; the dict gets "response" or "error"."""
    outcome: dict = {}

    def post() -> None:
        try:
            with httpx.Client(base_url=url, timeout=WAIT_SECONDS) as client:
                outcome["response"] = client.post("/api/chat", json={"message": text}, headers={"X-Device-ID": DEVICE})
        except httpx.HTTPError as err:
            outcome["error"] = err

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, outcome


def test_a_turn_shorter_than_the_grace_period_finishes_and_its_client_gets_the_reply(database_url, engine):
    with gate() as turn_gate:
        env = app_env(database_url, agents=SLOW_AGENTS, shutdown_grace_seconds=60)
        text = f"short gate={turn_gate.port}"
        with serving(env) as server:
            thread, outcome = post_in_thread(server.url, text)
            assert turn_gate.wait_arrived(1)
            server.process.send_signal(signal.SIGTERM)
            # uvicorn has stopped accepting and waits for the request in flight: only now may the turn end.
            assert wait_for(lambda: "Waiting for connections to close" in server.log(), WAIT_SECONDS)
            turn_gate.open()
            thread.join(WAIT_SECONDS)
            assert server.process.wait(WAIT_SECONDS) in STOPPED
            log = server.log()

    response = outcome.get("response")
    assert response is not None, outcome
    assert response.status_code == 200 and response.json()["reply"] == f"slow: {text} attempt=1"
    [row] = stored_messages(engine)[DEVICE]
    assert row.status == "done" and [reply[1] for reply in row.replies] == [f"slow: {text} attempt=1"]
    assert "Cancel" not in log and "Traceback" not in log


def test_a_turn_longer_than_the_grace_period_gives_its_lease_back_and_is_answered_once_by_the_next_holder(
    database_url, engine
):
    with gate() as turn_gate:
        # LEASE_SECONDS stays 30: a lease not given back would keep the message from the next holder.
        env = app_env(database_url, agents=SLOW_AGENTS, shutdown_grace_seconds=1)
        text = f"long gate1={turn_gate.port}"  # waits at the gate (never opened) on its first attempt only
        with serving(env) as server:
            thread, outcome = post_in_thread(server.url, text)
            assert turn_gate.wait_arrived(1)
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(WAIT_SECONDS) in STOPPED
            log = server.log()
        thread.join(WAIT_SECONDS)

    assert "Cancel 1 running task(s)" in log, log[-3000:]
    assert "response" not in outcome or outcome["response"].status_code != 200  # never answered by this server
    # Told, in the API's error format, that the message is kept and will be answered; not a plain-text 500.
    response = outcome.get("response")
    assert response is not None, outcome
    assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
    error = response.json()["error"]
    assert error["code"] == "interrupted" and "is kept and will be answered" in error["message"], error
    with engine.begin() as conn:
        status, attempts = conn.exec_driver_sql(
            "SELECT status, attempts FROM conversation_messages WHERE device_id = %(d)s AND role = 'user'",
            {"d": DEVICE},
        ).one()
        lease_live = conn.exec_driver_sql(
            "SELECT lease_expires_at > now() FROM conversation_states WHERE device_id = %(d)s", {"d": DEVICE}
        ).scalar()
    assert (status, attempts) == ("pending", 1)
    assert not lease_live, log  # given back at once, not left to lapse after LEASE_SECONDS

    # The next holder: the cleanup's recovery, as `python -m app cleanup` runs it.
    pipeline = Pipeline(engine, slow_agents.registry, make_settings(database_url))
    assert aio.run(pipeline.recover) == 1
    [row] = stored_messages(engine)[DEVICE]
    assert row.status == "done"
    assert [reply[1] for reply in row.replies] == [f"slow: {text} attempt=2"]
    assert aio.run(pipeline.recover) == 0


@pytest.mark.parametrize("launch", [serving, running_app], ids=["python -m app serve", "uvicorn --factory"])
def test_an_event_stream_open_at_sigterm_ends_at_once_and_holds_no_grace_period(database_url, launch):
    # SHUTDOWN_GRACE_SECONDS=60 under serve; plain uvicorn (running_app) waits for connections without
    # any bound. Either way the process exits only once the stream has ended.
    env = app_env(database_url, admin_api_keys=f"default:{ADMIN_KEY}", shutdown_grace_seconds=60)
    lines: list[str] = []
    opened, ended = threading.Event(), threading.Event()

    def follow(url: str) -> None:
        with httpx.Client(base_url=url, timeout=WAIT_SECONDS) as client:
            headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
            with client.stream("GET", "/api/inbox/events", headers=headers) as response:
                for line in response.iter_lines():
                    lines.append(line)
                    if line == "event: changed":
                        opened.set()
        ended.set()

    with launch(env) as server:
        reader = threading.Thread(target=follow, args=(server.url,), daemon=True)
        reader.start()
        assert opened.wait(WAIT_SECONDS), lines
        server.process.send_signal(signal.SIGTERM)
        # A guard, not a measure: without the fix the stream runs on for the 60 s grace (serve) or
        # EVENTS_STREAM_SECONDS (uvicorn), and the process with it.
        assert ended.wait(30), "the event stream was still open 30 s after SIGTERM"
        assert server.process.wait(30) in STOPPED
        log = server.log()

    assert ": the server is stopping: reconnect" in lines, lines  # ended by the server, saying why
    assert "Cancel" not in log and "Traceback" not in log, log[-3000:]


def stream_in_thread(url: str, text: str) -> tuple[list[dict], threading.Event]:
    """POST /api/chat/stream of the device's message from a thread: its parts as they come, and set once it ended."""
    request = {"id": "chat-1", "messages": [{"id": "ui-1", "role": "user", "parts": [{"type": "text", "text": text}]}]}
    items: list[dict] = []
    ended = threading.Event()

    def follow() -> None:
        with (
            httpx.Client(base_url=url, timeout=WAIT_SECONDS) as client,
            client.stream("POST", "/api/chat/stream", json=request, headers={"X-Device-ID": DEVICE}) as response,
        ):
            items.extend(parts(response))
        ended.set()

    threading.Thread(target=follow, daemon=True).start()
    return items, ended


def test_a_stream_relaying_a_turn_of_this_process_goes_on_after_sigterm_until_the_turn_ends(database_url):
    with gate() as turn_gate:
        env = app_env(database_url, agents=SLOW_AGENTS, shutdown_grace_seconds=60)
        text = f"streamed gate={turn_gate.port}"
        with serving(env) as server:
            items, ended = stream_in_thread(server.url, text)
            assert turn_gate.wait_arrived(1)
            server.process.send_signal(signal.SIGTERM)
            # uvicorn waits for the stream's connection: the stream goes on while its turn does.
            assert wait_for(lambda: "Waiting for connections to close" in server.log() or ended.is_set(), WAIT_SECONDS)
            assert not ended.is_set(), items
            turn_gate.open()
            assert ended.wait(WAIT_SECONDS)
            assert server.process.wait(WAIT_SECONDS) in STOPPED
            log = server.log()

    statuses = [item["data"]["status"] for item in items if item["type"] == "data-status"]
    assert statuses == [] and text_of(items) == f"slow: {text} attempt=1" and items[-1] == DONE, items
    assert "Cancel" not in log and "Traceback" not in log, log[-3000:]


def test_a_stream_whose_turn_is_finishing_at_sigterm_gets_the_stored_reply(database_url, engine):
    # The turn's writer retires when its agent returns, before the finish stores the reply. Holding the
    # device's row makes that window as long as the test needs: a reader that ended there, because the
    # server was stopping and no writer was left, would close the stream with no reply (queued).
    with gate() as turn_gate:
        env = app_env(database_url, agents=SLOW_AGENTS, shutdown_grace_seconds=60)
        text = f"finishing gate={turn_gate.port}"
        with serving(env) as server:
            items, ended = stream_in_thread(server.url, text)
            assert turn_gate.wait_arrived(1)
            server.process.send_signal(signal.SIGTERM)
            assert wait_for(lambda: "Waiting for connections to close" in server.log(), WAIT_SECONDS)
            with psycopg.connect(libpq_url(database_url)) as conn:  # a transaction (the engine autocommits)
                locked = conn.execute("SELECT 1 FROM conversation_states WHERE device_id = %s FOR UPDATE", (DEVICE,))
                assert locked.fetchone() == (1,)
                turn_gate.open()  # the agent answers, its writer retires, its finish waits for the row
                assert wait_for(lambda: waiting_on_a_lock(engine), WAIT_SECONDS)
            assert ended.wait(WAIT_SECONDS)
            assert server.process.wait(WAIT_SECONDS) in STOPPED

    statuses = [item["data"]["status"] for item in items if item["type"] == "data-status"]
    assert statuses == [] and text_of(items) == f"slow: {text} attempt=1" and items[-1] == DONE, items


def waiting_on_a_lock(engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).scalar()
        )

"""SIGTERM to `python -m app serve` during a turn: a short turn finishes and is answered; a turn longer
than SHUTDOWN_GRACE_SECONDS is cancelled, its client told so (503 `interrupted`), its lease given back,
and the next holder answers it once."""

from __future__ import annotations

import signal
import threading

import httpx
import pytest

from app.pipeline import Pipeline
from tests.conftest import make_settings
from tests.reliability.ledger_checks import stored_messages
from tests.utils import aio, slow_agents
from tests.utils.agents import wait_for
from tests.utils.gate import gate
from tests.utils.server import app_env, serving

pytestmark = pytest.mark.slow

DEVICE = "5e1d0c3b-7a6f-4e2d-9c8b-1a2b3c4d5e60"
SLOW_AGENTS = "tests.utils.slow_agents:registry"
WAIT_SECONDS = 60.0  # a bound on the test, never a measure of speed
# uvicorn ends a graceful shutdown by raising the signal it caught again: the process dies of SIGTERM.
STOPPED = (0, -signal.SIGTERM)


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

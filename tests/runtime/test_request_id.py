"""A message's request id is on its agent's log lines and on the pipeline's "message handled" line,
for an async agent (awaited on the loop) and a sync one (on a worker thread), in process and under serve."""

from __future__ import annotations

import logging
import re

import httpx
import pytest

from app.core.logging import RequestIdFilter
from tests.utils.agents import wait_for
from tests.utils.apps import app_client, use_registry
from tests.utils.server import app_env, serving
from tests.utils.slow_agents import Slow, SyncLogging

DEVICE = "7c2b9e1a-4d3f-4a5b-8c6d-0e1f2a3b4c5d"
AGENT_LOGGER = "tests.utils.slow_agents"


@pytest.mark.parametrize("agent", [Slow(), SyncLogging()], ids=["async-agent", "sync-agent"])
def test_the_request_id_is_on_the_agents_lines_and_on_message_handled(settings, engine, caplog, agent):
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestIdFilter())  # as the app's handler does: reads the id where the line is written
    with app_client(settings) as client:
        use_registry(client, {"manager": agent})
        first = client.post("/api/chat", json={"message": "hello log"}, headers={"X-Device-ID": DEVICE})
        given = client.post(
            "/api/chat", json={"message": "again log"}, headers={"X-Device-ID": DEVICE, "X-Request-ID": "req-42.a"}
        )
    assert first.status_code == given.status_code == 200
    ids = [first.headers["X-Request-ID"], "req-42.a"]
    assert given.headers["X-Request-ID"] == "req-42.a"
    assert [r.request_id for r in caplog.records if r.name == AGENT_LOGGER] == ids
    assert [r.request_id for r in caplog.records if r.getMessage() == "message handled"] == ids


def test_serve_writes_the_request_id_on_the_agents_lines_and_on_message_handled(database_url, engine):
    env = app_env(database_url, agents="tests.utils.slow_agents:registry")
    with serving(env) as server, httpx.Client(base_url=server.url, timeout=60.0) as client:
        response = client.post("/api/chat", json={"message": "hello log"}, headers={"X-Device-ID": DEVICE})
        assert response.status_code == 200
        request_id = response.headers["X-Request-ID"]
        # The access line is written after the response: wait for it (a bound, not a measure).
        # The bracket holds the request id, then the trace and span ids (app/core/logging.py).
        tagged = re.compile(rf"\[{re.escape(request_id)} \S+ \S+\] ")
        assert wait_for(lambda: any(tagged.search(line) and "app.access" in line for line in server.log().splitlines()))
        log = server.log()
    mine = [line for line in log.splitlines() if tagged.search(line)]
    assert any(re.search(rf"\] {AGENT_LOGGER}: agent working$", line) for line in mine), log
    assert any(line.endswith("app.pipeline: message handled") for line in mine), log

"""Streams across real uvicorn processes: the AI SDK's own client, a second instance, a killed producer,
stop from another process, a client that leaves."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.streams.test_stream_api import AGENTS, body, stored
from tests.utils.gates import gate_server
from tests.utils.server import app_env, running_app
from tests.utils.sse import DONE, parts, text_of

JS = Path(__file__).resolve().parents[1] / "js"
TIMEOUT = httpx.Timeout(60.0)


@pytest.fixture(scope="session")
def node() -> str:
    """Node with the pinned `ai` package installed (npm ci once, from tests/js/package-lock.json)."""
    binary = shutil.which("node")
    if binary is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run the AI SDK's client (Debian packages nodejs, npm)")
    if not (JS / "node_modules" / "ai").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, capture_output=True)
    return binary


@pytest.fixture
def gates():
    with gate_server() as gates:
        yield gates


def env(database_url: str, gates, **settings) -> dict[str, str]:
    values = app_env(database_url, agents=AGENTS, **settings)
    values["GATE_URL"] = gates.url
    return values


def headers(device: str) -> dict[str, str]:
    return {"X-Device-ID": device}


def until_text(items) -> dict:
    """Read parts until the first text delta and return it."""
    return next(item for item in items if item["type"] == "text-delta")


def test_the_ai_sdk_client_reads_the_reply_as_stored_with_the_lock(database_url, engine, gates, node):
    device = str(uuid.uuid4())
    with running_app(env(database_url, gates)) as server:
        api = f"{server.url}/api/chat/stream"
        reader = subprocess.Popen(
            [node, "read_stream.mjs", "send", api, device, "hold sdk alpha beta gamma"],
            cwd=JS,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        gates.open("sdk")
        out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0, err
        message = json.loads(out)
        nothing = subprocess.run(
            [node, "read_stream.mjs", "resume", api, device], cwd=JS, capture_output=True, text=True, timeout=60
        )
    texts = [part["text"] for part in message["parts"] if part["type"] == "text"]
    locks = [part["data"] for part in message["parts"] if part["type"] == "data-lock"]
    assert stored(engine, device)[-1] == ("assistant", "alpha beta gamma", False)
    assert "".join(texts) == "alpha beta gamma" and message["role"] == "assistant"
    assert locks == [{"agent": "helper", "expires_at": locks[0]["expires_at"], "answered_by": "helper"}]
    assert locks[0]["expires_at"] is not None
    assert (nothing.returncode, nothing.stdout.strip()) == (0, "null")  # 204: no turn in flight


def test_another_instance_streams_the_turn_and_goes_on_with_the_rerun_when_the_producer_is_killed(
    database_url, engine, gates
):
    device = str(uuid.uuid4())
    settings = {"lease_seconds": 2}
    with (
        running_app(env(database_url, gates, **settings)) as a,
        running_app(env(database_url, gates, **settings)) as b,
        httpx.Client(timeout=TIMEOUT) as client,
    ):
        with client.stream(
            "POST", f"{a.url}/api/chat/stream", json=body("hold kill one two three"), headers=headers(device)
        ) as produced:
            assert until_text(parts(produced))["delta"] == "one "
            with client.stream("GET", f"{b.url}/api/chat/stream/chat-1/stream", headers=headers(device)) as resumed:
                assert resumed.status_code == 200
                items = parts(resumed)
                seen = [next(items)]
                seen.append(until_text(items))  # from the draft A wrote, read by B
                assert seen[0]["type"] == "start" and seen[1]["delta"] == "one "
                a.process.send_signal(signal.SIGKILL)  # the producer dies mid-turn
                a.process.wait(10)
                rest = list(items)
    restarts = [item["data"] for item in rest if item["type"] == "data-status"]
    assert restarts == [{"status": "restarted", "attempt": 2}]
    assert text_of(rest, after_restart=True) == "again one two three" and rest[-1] == DONE
    assert stored(engine, device)[-1] == ("assistant", "again one two three", False)


def test_stop_from_another_process_ends_the_turn_stopped(database_url, engine, gates):
    device = str(uuid.uuid4())
    with (
        running_app(env(database_url, gates)) as a,
        running_app(env(database_url, gates)) as b,
        httpx.Client(timeout=TIMEOUT) as client,
    ):
        with client.stream(
            "POST", f"{a.url}/api/chat/stream", json=body("hold never w1 w2"), headers=headers(device)
        ) as produced:
            items = parts(produced)
            assert until_text(items)["delta"] == "w1 "
            stop = client.post(f"{b.url}/api/chat/stop", headers=headers(device)).json()
            assert stop["status"] == "stopping"
            rest = list(items)
        assert [i["data"]["status"] for i in rest if i["type"] == "data-status"] == ["stopped"]
        assert stored(engine, device) == [("user", "hold never w1 w2", False), ("assistant", "w1 ", True)]
        assert client.post(f"{b.url}/api/chat/stop", headers=headers(device)).json()["status"] == "idle"
        after = client.post(f"{b.url}/api/chat", json={"message": "next"}, headers=headers(device))
        assert (after.status_code, after.json()["reply"]) == (200, "next")


def test_a_client_that_leaves_mid_stream_does_not_stop_the_turn(database_url, engine, gates):
    device = str(uuid.uuid4())
    with running_app(env(database_url, gates)) as server, httpx.Client(timeout=TIMEOUT) as client:
        with client.stream(
            "POST", f"{server.url}/api/chat/stream", json=body("hold leave x y z"), headers=headers(device)
        ) as produced:
            assert until_text(parts(produced))["delta"] == "x "
        # The connection is closed. The turn goes on: resume it, then let the agent finish.
        with client.stream("GET", f"{server.url}/api/chat/stream/chat-1/stream", headers=headers(device)) as resumed:
            assert resumed.status_code == 200
            items = parts(resumed)
            assert until_text(items)["delta"] == "x "
            gates.open("leave")
            rest = list(items)
    assert "x " + text_of(rest) == "x y z" and rest[-1] == DONE
    assert stored(engine, device)[-1] == ("assistant", "x y z", False)

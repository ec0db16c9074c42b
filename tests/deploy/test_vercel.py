"""Vercel: api/index.py imports without touching the database, and vercel.json points at real routes."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import make_settings
from tests.deploy.conftest import CRON_SECRET, ROOT, clean_env, run_python

CONFIG = json.loads((ROOT / "vercel.json").read_text(encoding="utf-8"))

IMPORT_ENTRYPOINT = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("vercel_entry", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from fastapi import FastAPI
assert isinstance(module.app, FastAPI), type(module.app)
assert module.services.database._engine is None, "import created an engine"
assert module.services.database.serverless
print(sorted(module.app.openapi()["paths"]))
"""


def test_entrypoint_imports_without_connecting(tmp_path: Path):
    # Port 1 refuses at once: any connection attempt at import would fail the import.
    env = clean_env(PYTHONPATH=str(ROOT), DATABASE_URL="postgresql://x@127.0.0.1:1/x")
    done = run_python(IMPORT_ENTRYPOINT, str(ROOT / "api" / "index.py"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "/api/cron/cleanup" in done.stdout and "/api/health" in done.stdout
    assert "connection" not in done.stderr.lower()


def binds_app(path: Path) -> bool:
    """Whether a module binds `app` at top level, the test Vercel's entrypoint detection applies."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "app" for t in node.targets):
            return True
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "app":
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "app":
            return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == "app" for a in node.names):
            return True
    return False


def test_vercel_picks_api_index_as_entrypoint():
    # The FastAPI preset takes the first of these files that binds `app`; api/index.py must be it.
    candidates = [
        ROOT / folder / f"{name}.py"
        for folder in ("", "src", "app", "api")
        for name in ("app", "index", "server", "main", "wsgi", "asgi")
    ]
    chosen = next(path for path in candidates if path.is_file() and binds_app(path))
    assert chosen == ROOT / "api" / "index.py"


def test_config_keeps_public_paths():
    assert CONFIG["framework"] == "fastapi"
    # `builds` cannot be mixed with `functions`; `routes` would replace the preset's catch-all.
    assert "builds" not in CONFIG and "routes" not in CONFIG
    # An internal rewrite now hands the app the destination path: /api/index would 404 everything.
    internal = [r for r in CONFIG.get("rewrites", []) if str(r.get("destination", "")).startswith("/")]
    assert internal == []
    for pattern in CONFIG["functions"]:
        assert (ROOT / pattern).is_file(), pattern
        assert 1 <= CONFIG["functions"][pattern]["maxDuration"] <= 300


@pytest.mark.parametrize("cron", CONFIG["crons"], ids=lambda cron: cron["path"])
def test_every_cron_path_is_a_protected_get_route(database_url: str, cron: dict):
    assert len(cron["schedule"].split()) == 5
    client = TestClient(create_app(make_settings(database_url, cron_secret=CRON_SECRET), serverless=True))
    # Vercel calls the path with GET and `Authorization: Bearer $CRON_SECRET`.
    assert client.get(cron["path"]).status_code == 401
    assert client.get(cron["path"], headers={"Authorization": f"Bearer {CRON_SECRET}"}).status_code == 200


def test_default_cron_schedule_fits_the_hobby_plan():
    # Hobby runs a cron at most once a day: minute and hour must be fixed values.
    for cron in CONFIG["crons"]:
        minute, hour, *_ = cron["schedule"].split()
        assert minute.isdigit() and hour.isdigit(), cron

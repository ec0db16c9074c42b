"""A server's lifespan settles the garbage collector once (app/core/collector.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.utils.server import app_env

# A fresh interpreter: the collector's state is the process's, and this one's was settled by
# whichever test first ran a lifespan.
PROBE = """
import gc, json
from fastapi.testclient import TestClient
from app.core import collector
from app.main import create_app

before = gc.get_threshold()
with TestClient(create_app()):
    first = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
with TestClient(create_app()):
    second = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
print(json.dumps({"before": before, "first": first, "second": second, "gen0": collector.GEN0_THRESHOLD}))
"""


def test_the_first_lifespan_freezes_start_up_and_raises_the_youngest_threshold_once(database_url):
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=app_env(database_url), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["before"][0] == 700  # CPython's default, untouched by importing the app
    assert seen["first"]["threshold"] == [seen["gen0"], *seen["before"][1:]]
    assert seen["first"]["frozen"] > 10_000  # modules, routes, schemas: start-up's objects
    # A second app's lifespan in the same process freezes nothing more (its objects stay collectable):
    # the frozen count only falls, as frozen objects are freed by reference counting.
    assert seen["second"]["threshold"] == seen["first"]["threshold"]
    assert seen["second"]["frozen"] <= seen["first"]["frozen"]

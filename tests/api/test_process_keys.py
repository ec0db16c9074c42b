"""Nothing process-unique is made at import: a SnapStart restore or a forked worker gets its own."""

from __future__ import annotations

import subprocess
import sys

from tests.deploy.conftest import ROOT, clean_env

CODE = """
import os
from app import lambda_handler  # a cold start: every module the Lambda loads
from app.core import logging as app_logging
from app.core.config import Settings

assert app_logging._process_key is None, "a log-hash key was made at import"
settings = Settings(_env_file=None)
parent = app_logging.device_hash(settings, "15551230001")
assert parent == app_logging.device_hash(settings, "15551230001")  # stable within a process
read, write = os.pipe()
if os.fork() == 0:
    os.write(write, app_logging.device_hash(settings, "15551230001").encode())
    os._exit(0)
os.wait()
child = os.read(read, 64).decode()
print("different" if child != parent else "shared")
"""


def test_log_hash_fallback_key_is_made_on_first_use_and_per_process(tmp_path):
    env = clean_env(PYTHONPATH=str(ROOT), DATABASE_URL="postgresql://x@127.0.0.1:1/x")
    done = subprocess.run(
        [sys.executable, "-c", CODE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "different"

"""Helpers for the deployment tests: sample events, and subprocesses with a controlled environment."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mangum import Mangum

from app.core.config import Settings
from app.lambda_handler import http_handler
from app.main import create_app
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
CRON_SECRET = "test-cron-secret-4f9a1c7e2b"


def sample_event(name: str) -> dict[str, Any]:
    """A fresh copy of one of the shipped sample events."""
    return copy.deepcopy(json.loads((EVENTS / name).read_text(encoding="utf-8")))


def lambda_handler_for(settings: Settings) -> Mangum:
    """What app.lambda_handler builds at import, but from explicit settings instead of the environment."""
    return http_handler(create_app(settings, serverless=True), settings)


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any app setting, plus values (which must be complete)."""
    fields = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key.upper() not in fields}
    return env | values


def run_python(code: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter of this venv; cwd should hold no .env file."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def cron_settings(database_url: str) -> Settings:
    return make_settings(database_url, cron_secret=CRON_SECRET)

"""Logs: JSON lines with a request id, agent, timings and outcome; never a body, secret or raw device id."""

from __future__ import annotations

import hashlib
import io
import json
import logging

import pytest

from app.core.logging import JsonFormatter, RequestIdFilter, device_hash
from tests.conftest import make_settings
from tests.utils.apps import app_client

DEVICE = "9c0e3d55-3f4b-4a51-8f0e-5a1d2b3c4d5e"
SECRET_TEXT = "my card number is 4111 1111 1111 1111"


@pytest.fixture
def json_logs():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(level)


def test_a_chat_request_logs_structured_lines(database_url, engine, json_logs):
    settings = make_settings(database_url, log_hash_key="k", cron_secret="cron-secret-value")
    with app_client(settings) as client:
        response = client.post(
            "/api/chat", json={"message": SECRET_TEXT}, headers={"X-Device-ID": DEVICE, "X-Request-ID": "req-42"}
        )
        client.get("/api/cron/cleanup", headers={"Authorization": "Bearer cron-secret-value"})
    assert response.headers["x-request-id"] == "req-42"
    lines = json_logs()
    handled = [line for line in lines if line["msg"] == "message handled"]
    assert len(handled) == 1
    entry = handled[0]
    assert entry["request_id"] == "req-42"
    assert entry["agent"] == "manager" and entry["outcome"] == "done"
    assert entry["device"] == device_hash(settings, DEVICE)
    assert {"db_ms", "agent_ms", "total_ms"} <= entry.keys()
    access = [line for line in lines if line["logger"] == "app.access" and line["path"] == "/api/chat"]
    assert access and access[0]["status"] == 200 and access[0]["request_id"] == "req-42"
    text = "\n".join(json.dumps(line) for line in lines)
    for leak in (DEVICE, SECRET_TEXT, "4111 1111", "cron-secret-value"):
        assert leak not in text


def test_request_ids_are_generated_and_insane_ones_replaced(settings, engine):
    with app_client(settings) as client:
        generated = client.get("/api/health").headers["x-request-id"]
        replaced = client.get("/api/health", headers={"X-Request-ID": "a b\tc"}).headers["x-request-id"]
    assert len(generated) == 32 and len(replaced) == 32 and generated != replaced


def test_device_hash_is_keyed():
    one = make_settings("postgresql+psycopg://x@h/d", log_hash_key="one")
    first, again = device_hash(one, DEVICE), device_hash(one, DEVICE)
    second = device_hash(make_settings("postgresql+psycopg://x@h/d", log_hash_key="two"), DEVICE)
    assert first == again and first != second  # stable under one key, different under another
    # Keyed: not a plain digest that anyone holding a device id could recompute and grep for.
    assert first not in hashlib.sha256(DEVICE.encode()).hexdigest()

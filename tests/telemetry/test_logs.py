"""Logs join traces: each line names the trace and span it was written in, as JSON and as text."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest

from app.core.logging import TEXT_FORMAT, JsonFormatter, RequestIdFilter
from tests.conftest import make_settings
from tests.utils.agents import Scripted
from tests.utils.apps import app_client, use_registry
from tests.utils.telemetry import recording

DEVICE = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"


@pytest.fixture
def logs() -> Iterator[Callable[[logging.Formatter], str]]:
    """Capture the root logger's lines; call with a formatter to read them formatted that way."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda formatter: "\n".join(formatter.format(record) for record in records)
    root.removeHandler(handler)
    root.setLevel(level)


def test_log_lines_carry_the_trace_and_span_ids(database_url, engine, logs):
    with recording() as recorded, app_client(make_settings(database_url)) as client:
        use_registry(client, {"manager": Scripted("manager")})
        assert client.post("/api/chat", json={"message": "hi"}, headers={"X-Device-ID": DEVICE}).status_code == 200
    trace_ids = {f"{span.context.trace_id:032x}" for span in recorded.spans()}
    span_ids = {f"{span.context.span_id:016x}" for span in recorded.spans()}
    assert len(trace_ids) == 1
    lines = [json.loads(line) for line in logs(JsonFormatter()).splitlines()]
    handled = [line for line in lines if line["msg"] == "message handled"]
    access = [line for line in lines if line["logger"] == "app.access" and line.get("path") == "/api/chat"]
    assert handled and access
    for line in handled + access:
        assert line["trace_id"] in trace_ids and line["span_id"] in span_ids
    text = logs(logging.Formatter(TEXT_FORMAT))
    assert f" {handled[0]['trace_id']} {handled[0]['span_id']}] app.pipeline: message handled" in text


def test_outside_a_trace_the_ids_are_dashes(logs):
    logging.getLogger("app.test").info("no request here")
    line = json.loads(logs(JsonFormatter()).splitlines()[-1])
    assert line["trace_id"] == "-" and line["span_id"] == "-"

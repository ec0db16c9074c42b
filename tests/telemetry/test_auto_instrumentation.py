"""FastAPI instrumented before the app is made (auto-instrumentation, as the ADOT Lambda layer's wrapper
runs it): the app installs no provider of its own, and every request's span is still named by its route."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[2]

# What the wrapper does before the handler is imported: an SDK provider made global and FastAPI
# instrumented; then the first requests of two areas (each area's routes load on its first request).
SCRIPT = """
import json, uuid
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
FastAPIInstrumentor().instrument(tracer_provider=provider)

from app.lambda_handler import handler
from tests.utils.cold_probe import http_event

for path in ["/api/health", f"/api/sessions/{uuid.uuid4()}"]:
    handler(http_event("GET", path, {}, None), None)
spans = exporter.get_finished_spans()
print(json.dumps([span.name for span in spans if span.kind == trace.SpanKind.SERVER]))
"""


def test_spans_of_an_instrumentation_installed_before_the_app_are_named_by_route(database_url):
    env = {key: value for key, value in subprocess_env(database_url).items() if not key.startswith("OTEL_")}
    env |= {"PYTHONPATH": str(ROOT), "ADMIN_API_KEYS": "default:auto-instrumented-admin-key-3c9e"}
    command = [sys.executable, "-c", SCRIPT]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    names = json.loads(done.stdout.strip().splitlines()[-1])
    assert names == ["GET /api/health", "GET /api/sessions/{device_id}"]

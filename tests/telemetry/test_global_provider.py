"""Spans with the global providers: none record until a provider is installed, and every one after it does,
whenever it was installed (a Lambda layer's wrapper may install it after the app's telemetry was made)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.telemetry.instruments import Telemetry

telemetry = Telemetry()  # the global providers: the API's proxies until one is installed
with telemetry.span("agent_sessions.claim", lambda: {"agent_sessions.tenant": "t"}) as span:
    before = [telemetry.tracing(), span.is_recording()]

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

with telemetry.span("agent_sessions.claim", lambda: {"agent_sessions.tenant": "t"}) as outer:
    with telemetry.span("agent_sessions.finish", lambda: {"agent_sessions.tenant": "t"}):
        current = trace.get_current_span() is not outer
spans = {span.name: span for span in exporter.get_finished_spans()}
claim, finish = spans["agent_sessions.claim"], spans["agent_sessions.finish"]
print(json.dumps({
    "before": before,
    "after": telemetry.tracing(),
    "names": sorted(spans),
    "nested": finish.parent is not None and finish.parent.span_id == claim.context.span_id,
    "current": current,
    "tenant": claim.attributes.get("agent_sessions.tenant"),
}))
"""


def test_spans_record_once_a_global_provider_is_installed_and_not_before():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["before"] == [False, False]
    assert seen["after"] is True
    assert seen["names"] == ["agent_sessions.claim", "agent_sessions.finish"]
    assert seen["nested"] and seen["current"] and seen["tenant"] == "t"

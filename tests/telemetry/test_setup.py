"""Setup from the standard OTEL_* variables: nothing without them, OTLP/HTTP to the endpoint they name."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[2]

# Builds the app as `python -m app serve` does (create_app), then as Lambda does (the handler module),
# answers one request through the Lambda handler, and tells what got installed.
PROBE = """
import json, sys
from opentelemetry import metrics, trace
from app.core.config import Settings
from app.main import create_app
mode = sys.argv[1]
from app import telemetry
if mode == "server":
    create_app(Settings())
else:
    from app import lambda_handler
    from tests.deploy.conftest import sample_event
    lambda_handler.handler(sample_event("function-url-health.json"), None)
print(json.dumps({
    "tracer_provider": type(trace.get_tracer_provider()).__name__,
    "meter_provider": type(metrics.get_meter_provider()).__name__,
    "metrics_endpoint": telemetry.active().prometheus is not None,
    "modules": sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk") or "exporter" in m),
}))
"""


def probe(mode: str, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def no_otel(database_url: str) -> dict[str, str]:
    return {key: value for key, value in subprocess_env(database_url).items() if not key.startswith("OTEL_")}


def test_without_otel_variables_nothing_is_installed_or_sent(database_url):
    env = no_otel(database_url) | {"PYTHONPATH": str(ROOT)}
    server = probe("server", env)
    assert server["tracer_provider"] == "ProxyTracerProvider"
    assert server["meter_provider"] == "_ProxyMeterProvider"  # GET /metrics's reader is not global
    assert server["metrics_endpoint"]  # METRICS=auto: on for a server
    assert not [module for module in server["modules"] if "sdk.trace" in module or "otlp" in module]
    function = probe("lambda", env)
    assert function["tracer_provider"] == "ProxyTracerProvider"
    assert not function["metrics_endpoint"]
    assert function["modules"] == []  # on Lambda (METRICS=auto: off) the SDK is not even imported


@contextmanager
def collector() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """A local stand-in for an OpenTelemetry collector's OTLP/HTTP receiver: it keeps what is posted."""
    received: list[tuple[str, bytes]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the stdlib's name
            received.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", received
    finally:
        server.shutdown()
        server.server_close()


def test_an_otlp_endpoint_gets_the_request_span(database_url):
    with collector() as (endpoint, received):
        env = no_otel(database_url) | {
            "PYTHONPATH": str(ROOT),
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_SERVICE_NAME": "chat-test",
        }
        function = probe("lambda", env)
    assert function["tracer_provider"] == "TracerProvider"
    traces = [body for path, body in received if path == "/v1/traces"]
    assert traces, [path for path, _ in received]
    request = ExportTraceServiceRequest.FromString(traces[0])
    resource = {item.key: item.value.string_value for item in request.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "chat-test"
    names = [span.name for group in request.resource_spans for scope in group.scope_spans for span in scope.spans]
    assert "GET /api/health" in names


def test_the_sdk_is_not_installed_when_disabled(database_url):
    env = no_otel(database_url) | {
        "PYTHONPATH": str(ROOT),
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_SDK_DISABLED": "true",
    }
    assert probe("lambda", env)["tracer_provider"] == "ProxyTracerProvider"

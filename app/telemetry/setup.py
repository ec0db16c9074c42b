"""Installing the OpenTelemetry SDK from the standard OTEL_* variables, once per process.

| variable                                      | effect                                                      |
|-----------------------------------------------|-------------------------------------------------------------|
| OTEL_SDK_DISABLED=true                        | nothing installed, whatever else is set                     |
| OTEL_TRACES_EXPORTER                          | exporters by name (`otlp`, `console`, `none`); unset: `otlp` |
|                                               | when an OTLP endpoint is set, else none                     |
| OTEL_EXPORTER_OTLP_ENDPOINT / _TRACES_ / _METRICS_ENDPOINT | where OTLP goes (the exporter reads them itself) |
| OTEL_METRICS_EXPORTER                         | as OTEL_TRACES_EXPORTER, for metrics (`prometheus` is our   |
|                                               | GET /metrics, see METRICS)                                   |
| OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES   | the resource (default service name: agent-sessions)         |
| OTEL_PYTHON_ID_GENERATOR                      | trace id generator by entry point name (`xray`, from       |
|                                               | opentelemetry-sdk-extension-aws, for X-Ray's time-based ids) |
| OTEL_BSP_*, OTEL_METRIC_EXPORT_INTERVAL ...   | read by the SDK's processors and readers                    |

Unlike the SDK's own default, no exporter is assumed: with none of these set nothing is
installed, nothing is sent, the SDK is not even imported, and the global providers stay
the API's proxies. An exporter is found by its entry point name (groups
opentelemetry_traces_exporter / opentelemetry_metrics_exporter), so any installed one
can be named; `otlp` is OTLP over HTTP (the `otlp` extra).

The Prometheus reader behind GET /metrics (METRICS) is not global: it sees this
service's instruments only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from app.core.config import Settings
from app.telemetry.instruments import Telemetry

logger = logging.getLogger(__name__)

SERVICE_NAME = "agent-sessions"


def exporter_names(environ: Mapping[str, str], signal: str) -> list[str]:
    """The exporters asked for one signal ("traces" or "metrics"); [] when telemetry is not configured."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip()
    if named:
        return [name.strip() for name in named.split(",") if name.strip() and name.strip() != "none"]
    endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    )
    return ["otlp"] if endpoint else []


def _exporter(signal: str, name: str) -> Any:
    group = f"opentelemetry_{signal}_exporter"
    found = {point.name: point for point in entry_points(group=group)}
    # `otlp` is the gRPC package's name; this service ships OTLP over HTTP (the `otlp` extra).
    point = found.get(name) or (found.get("otlp_proto_http") if name == "otlp" else None)
    if point is None:
        raise RuntimeError(
            f"OTEL_{signal.upper()}_EXPORTER names {name!r}, which is not installed "
            f"(pip install 'agent-sessions[otlp]' for otlp); found: {', '.join(sorted(found)) or 'none'}"
        )
    return point.load()()


def _id_generator(environ: Mapping[str, str]) -> Any:
    name = environ.get("OTEL_PYTHON_ID_GENERATOR", "").strip()
    if not name:
        return None  # the SDK's random ids
    found = {point.name: point for point in entry_points(group="opentelemetry_id_generator")}
    if name not in found:
        raise RuntimeError(f"OTEL_PYTHON_ID_GENERATOR names {name!r}, which is not installed")
    return found[name].load()()


def _resource() -> Any:
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    return resource


def build(settings: Settings, *, serverless: bool, environ: Mapping[str, str] | None = None) -> Telemetry:
    """The providers the environment asks for, set as the global ones (not the Prometheus-only meter provider).

    METRICS (on, off, auto: on except on Lambda) adds the reader behind GET /metrics.
    Raises RuntimeError when an exporter is named that is not installed.
    """
    environ = os.environ if environ is None else environ
    traces = exporter_names(environ, "traces")
    pushed = [name for name in exporter_names(environ, "metrics") if name != "prometheus"]
    scrape = settings.metrics == "on" or (settings.metrics == "auto" and not serverless)
    if not (traces or pushed or scrape):
        return Telemetry()
    from opentelemetry import metrics, trace

    resource = _resource()
    tracer_provider = meter_provider = registry = None
    if traces:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        tracer_provider = TracerProvider(resource=resource, id_generator=_id_generator(environ))
        for name in traces:
            tracer_provider.add_span_processor(BatchSpanProcessor(_exporter("traces", name)))
        trace.set_tracer_provider(tracer_provider)
    if pushed or scrape:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader

        readers: list[MetricReader] = [PeriodicExportingMetricReader(_exporter("metrics", name)) for name in pushed]
        if scrape:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry(auto_describe=False)
            readers.append(PrometheusMetricReader(registry=registry, scope_info_enabled=False))
        meter_provider = MeterProvider(metric_readers=readers, resource=resource)
        if pushed:  # exported anyway: libraries' instruments go along
            metrics.set_meter_provider(meter_provider)
    logger.info(
        "telemetry: traces to %s, metrics to %s",
        ", ".join(traces) or "nowhere",
        ", ".join(pushed + (["GET /metrics"] if scrape else [])) or "nowhere",
    )
    return Telemetry(tracer_provider, meter_provider, registry)

"""Telemetry for a test: SDK providers with the SDK's in-memory exporter and reader, made the app's active ones."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from app import telemetry


@dataclass
class Recorded:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    registry: CollectorRegistry

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """Finished spans in the order they ended, optionally those with this name (or name prefix + "*")."""
        spans = list(self.exporter.get_finished_spans())
        if name is None:
            return spans
        if name.endswith("*"):
            return [span for span in spans if span.name.startswith(name[:-1])]
        return [span for span in spans if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        """The one finished span with this name (or name prefix + "*"); fails when there are none or several."""
        spans = self.spans(name)
        assert len(spans) == 1, [span.name for span in self.spans()]
        return spans[0]

    def text(self) -> str:
        """Every name, attribute and event of every span and their resource, as one text to search for a leak."""
        parts = []
        for span in self.spans():
            parts += [span.name, repr(dict(span.attributes)), repr(dict(span.resource.attributes))]
            parts.append(span.status.description or "")
            parts += [f"{event.name} {dict(event.attributes)}" for event in span.events]
        return "\n".join(parts)

    def points(self, metric: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, value) of each data point of metric: value for sums and gauges, count for histograms."""
        found = []
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for item in scope.metrics:
                    if item.name == metric:
                        for point in item.data.data_points:
                            value = point.count if hasattr(point, "bucket_counts") else point.value
                            found.append((dict(point.attributes), value))
        return found


@contextlib.contextmanager
def recording() -> Iterator[Recorded]:
    """Spans and metrics of everything the app does inside the block, kept in memory."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    registry = CollectorRegistry(auto_describe=False)
    prometheus = PrometheusMetricReader(registry=registry, scope_info_enabled=False)
    meter_provider = MeterProvider(metric_readers=[reader, prometheus])
    try:
        with telemetry.use(telemetry.Telemetry(tracer_provider, meter_provider, registry)):
            yield Recorded(exporter, reader, tracer_provider, registry)
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()

"""Section "telemetry": what OpenTelemetry costs, side by side: msg/s in process and the Lambda handler's cold import.

msg/s: app.pipeline.Pipeline on the production engine, one message at a time on the
bench's event loop (as bench/pipeline.py's round trips), in rounds that alternate three
modes on the same pipeline and devices:

| mode   | what the pipeline's telemetry calls do                                              |
|--------|-------------------------------------------------------------------------------------|
| `none` | replaced by the cheapest stand-ins (a null context): the code without instrumentation |
| `off`  | as shipped with no OTEL_* set: the OpenTelemetry API's no-op tracer and meters        |
| `on`   | an SDK tracer provider (batch processor, in-memory exporter) and meter provider (in-   |
|        | memory reader) installed: every span and point is recorded                           |

Cold import: median wall time of fresh `python -c "import app.lambda_handler"` runs
(which builds the app, as a Lambda environment's first event does) with no OTEL_*
variable and with OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_SERVICE_NAME set (the SDK and the
OTLP exporter are then imported and installed; nothing listens there and nothing is
sent at import), interleaved, with `python -c pass` to take the interpreter's start out,
and the OpenTelemetry API's import alone: an upper bound of what instrumentation adds
to the import when nothing is configured.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import telemetry
from app.agents import load_registry
from app.pipeline import Inbound, Pipeline
from bench.chatload import SCRIPT, web_devices
from bench.common import Bench, child_env, paired_ratio, python, ratio, table
from tests.utils import aio

MODES = ("none", "off", "on")
IMPORT = "import app.lambda_handler"
# Where the "set" import's exporter would send: a closed port on the loopback (nothing is sent at import).
OTEL_SET = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SERVICE_NAME": "agent-sessions-bench"}
SDK_LOADED = "import sys; print('opentelemetry.sdk' in sys.modules)"
# What the instrumentation adds to the import when off: the OpenTelemetry API (app/telemetry is a few
# small modules). Timed alone in a fresh process it is an upper bound: much of it is the standard library
# (typing_extensions, logging, inspect) that the handler's other packages import anyway. What it adds is
# timed after those packages (the request path's, as the cold start section names them): its margin.
API = "import opentelemetry.trace, opentelemetry.metrics"
DEPS = "import fastapi, mangum, pydantic_settings, psycopg, psycopg_pool, tenacity"


def run(b: Bench) -> dict[str, Any]:
    rounds, messages = b.pick((12, 200), (2, 24))
    out: dict[str, Any] = {"throughput": throughput(b, rounds, messages), "cold_import": cold_import(b, b.pick(10, 3))}
    _print(out)
    return out


# -- msg/s --------------------------------------------------------------------------------------------


class _Bare:
    """What telemetry.turn and telemetry.waiting yield, doing nothing."""

    def outcome(self, outcome: Any) -> None:
        pass

    def end(self, outcome: str) -> None:
        pass


def _null(*args: Any, **kwargs: Any) -> contextlib.AbstractContextManager[_Bare]:
    return contextlib.nullcontext(_Bare())


@contextlib.contextmanager
def mode(name: str) -> Iterator[InMemorySpanExporter | None]:
    """The pipeline's telemetry as `name` asks (see the module's table) inside the block."""
    if name == "off":
        yield None
        return
    if name == "none":
        # The functions the pipeline calls on a free device's path, looked up on the module at each call.
        stand_ins = {
            "span": _null,
            "waiting": _null,
            "turn": _null,
            "lease_taken": lambda: None,
            "renewal": lambda result: None,
        }
        saved = {key: getattr(telemetry, key) for key in stand_ins}
        try:
            for key, value in stand_ins.items():
                setattr(telemetry, key, value)
            yield None
        finally:
            for key, value in saved.items():
                setattr(telemetry, key, value)
        return
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))  # the processor production uses
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    try:
        with telemetry.use(telemetry.Telemetry(tracer_provider, meter_provider)):
            yield exporter
    finally:
        tracer_provider.shutdown()  # exports what is still batched
        meter_provider.shutdown()


def throughput(b: Bench, rounds: int, messages: int) -> dict[str, Any]:
    """msg/s of each mode over `rounds` rounds of `messages` messages; the modes' order rotates per round."""
    settings = b.settings()
    engine = b.engine()
    pipeline = Pipeline(engine, load_registry(settings.agents), settings)
    devices = web_devices(max(1, messages // len(SCRIPT)), "telemetry")
    rates: dict[str, list[float]] = {name: [] for name in MODES}
    spans: dict[str, int] = {name: 0 for name in MODES}
    wrong = 0

    async def one_round() -> tuple[float, int]:
        bad = 0
        started = time.perf_counter()
        for i in range(messages):
            device = devices[(i // len(SCRIPT)) % len(devices)]
            result = await pipeline.handle(Inbound("default", device, SCRIPT[i % len(SCRIPT)]))
            bad += result.status != "answered"
        return time.perf_counter() - started, bad

    try:
        aio.run(one_round)  # warm-up: connections, prepared statements, imports
        for index in range(rounds):
            order = MODES[index % len(MODES) :] + MODES[: index % len(MODES)]
            for name in order:
                with mode(name) as exporter:
                    seconds, bad = aio.run(one_round)
                if exporter is not None:
                    spans[name] += len(exporter.get_finished_spans())
                rates[name].append(messages / seconds)
                wrong += bad
    finally:
        engine.dispose()
    median = {name: round(statistics.median(values), 1) for name, values in rates.items()}
    calls_us = off_calls_us(settings)
    return {
        # The calls a free device's message makes with nothing configured, timed alone: the part of
        # "off" that a noisy shared machine cannot resolve in msg/s.
        "off_calls_us_per_message": round(calls_us, 1),
        "off_calls_share_of_message": round(calls_us / (1e6 / median["none"]), 4),
        "rounds": rounds,
        "messages_per_round": messages,
        "unexpected_results": wrong,
        "messages_per_s": median,
        "rounds_messages_per_s": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
        "spans_per_message_on": round(spans["on"] / (rounds * messages), 2),
        # Per round (the three modes ran back to back), then the median: load that drifts cancels out.
        "ratio_off/none": paired_ratio(rates["off"], rates["none"]),
        "ratio_on/none": paired_ratio(rates["on"], rates["none"]),
    }


def off_calls_us(settings: Any, times: int = 20_000) -> float:
    """Microseconds per message of the telemetry calls on a free device's path (claim, turn, finish), off."""
    lease = SimpleNamespace(tenant="default", device=web_devices(1, "calls")[0])
    turn = SimpleNamespace(attempt=1, messages=[None], last=SimpleNamespace(id=1, session_id="sess"))
    outcome = SimpleNamespace(
        status="ok", agent="manager", agent_before=None, agent_after=None, error=None, metadata={}
    )
    started = time.perf_counter()
    for _ in range(times):
        with telemetry.span("agent_sessions.claim", settings, lease.tenant, lease.device):
            pass
        with telemetry.turn(settings, lease, turn, "manager") as traced:
            traced.outcome(outcome)
        with telemetry.span("agent_sessions.finish", settings, lease.tenant, lease.device):
            pass
    return (time.perf_counter() - started) / times * 1e6


# -- cold import --------------------------------------------------------------------------------------


def cold_import(b: Bench, runs: int) -> dict[str, Any]:
    """Median ms of `import app.lambda_handler` in fresh processes with OTEL_* unset and set."""
    envs = {
        "unset": child_env(DATABASE_URL=b.url),
        "set": child_env(DATABASE_URL=b.url, **OTEL_SET),
        "api": child_env(),
        "deps": child_env(),
        "deps_and_api": child_env(),
        "interpreter": child_env(),
    }
    codes = {
        "unset": IMPORT,
        "set": IMPORT,
        "api": API,
        "deps": DEPS,
        "deps_and_api": f"{DEPS}; {API}",
        "interpreter": "pass",
    }
    sdk = {}
    for name in ("unset", "set"):  # not timed: .pyc files and the page cache; and whether the SDK is loaded
        proc = _check(python(["-c", f"{IMPORT}; {SDK_LOADED}"], envs[name]), name)
        sdk[name] = proc.stdout.strip().splitlines()[-1] == "True"
    times: dict[str, list[float]] = {name: [] for name in codes}
    for _ in range(runs):
        for name, code in codes.items():
            started = time.perf_counter()
            _check(python(["-c", code], envs[name]), name)
            times[name].append((time.perf_counter() - started) * 1000)
    median = {name: round(statistics.median(values), 1) for name, values in times.items()}
    base = median["interpreter"]
    return {
        "runs": runs,
        "otel_set": OTEL_SET,
        "median_ms": median,
        "sdk_imported": sdk,
        "runs_ms": {name: [round(v, 1) for v in values] for name, values in times.items()},
        "ratio_set/unset": ratio(median["set"], median["unset"]),
        "ratio_set/unset_without_interpreter": ratio(median["set"] - base, median["unset"] - base),
        "api_share_of_unset_without_interpreter": ratio(median["api"] - base, median["unset"] - base),
        "api_margin_ms": round(median["deps_and_api"] - median["deps"], 1),
        "api_margin_share_of_unset": ratio(median["deps_and_api"] - median["deps"], median["unset"] - base),
    }


def _check(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if proc.returncode:
        raise RuntimeError(f"`{IMPORT}` ({what}) failed with exit {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return proc


def _print(out: dict[str, Any]) -> None:
    put = out["throughput"]
    rate = put["messages_per_s"]
    print(
        f"in-process pipeline, one message at a time: {put['rounds']} rounds x {put['messages_per_round']} "
        f"messages per mode, median msg/s; vs none: median of the rounds' ratios "
        f"({put['spans_per_message_on']} spans per message when on)"
    )
    print(
        table(
            ["mode", "msg/s", "vs none"],
            [
                ["none (no instrumentation)", rate["none"], 1.0],
                ["off (no OTEL_*: API no-ops)", rate["off"], put["ratio_off/none"]],
                ["on (in-memory exporter)", rate["on"], put["ratio_on/none"]],
            ],
        )
    )
    print(
        f"the telemetry calls of one message with nothing configured, timed alone: "
        f"{put['off_calls_us_per_message']} us, {put['off_calls_share_of_message'] * 100:.2f}% of a message at the "
        "`none` rate"
    )
    cold = out["cold_import"]
    med = cold["median_ms"]
    print(f"cold `{IMPORT}`, median of {cold['runs']} fresh processes")
    loaded = {name: "yes" if value else "no" for name, value in cold["sdk_imported"].items()}
    print(
        table(
            ["OTEL_*", "ms", "SDK imported"],
            [
                ["unset", med["unset"], loaded["unset"]],
                ["set (endpoint, service name)", med["set"], loaded["set"]],
                [f'python -c "{API}" (the API alone)', med["api"], "no"],
                [f'python -c "{DEPS}"', med["deps"], "no"],
                [f'python -c "{DEPS}; {API}"', med["deps_and_api"], "no"],
                ["python -c pass", med["interpreter"], ""],
            ],
        )
    )
    print(
        f"set/unset: {cold['ratio_set/unset']}x ({cold['ratio_set/unset_without_interpreter']}x without the "
        f"interpreter's start); the API alone is at most {cold['api_share_of_unset_without_interpreter']} of the "
        "unset import (without the interpreter's start); after the request path's packages it adds "
        f"{cold['api_margin_ms']} ms, {cold['api_margin_share_of_unset']} of the unset import"
    )

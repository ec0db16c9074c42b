"""The issue's targets, checked against a run's results: met, or missed by how much."""

from __future__ import annotations

from typing import Any


def evaluate(sections: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    locks = sections.get("locks", {}).get("ratios") or {}
    for op in ("get", "set", "mix"):
        value = locks.get(op, {}).get("service/bare_psycopg")
        rows.append(_at_least(f"{op}: SessionService >= 0.85x bare psycopg", value, 0.85, "x"))
    for op in ("get", "set", "mix"):
        value = locks.get(op, {}).get("service/naive_orm")
        rows.append(_at_least(f"{op}: SessionService >= 4x naive ORM", value, 4.0, "x"))
    peers = sections.get("peers", {})
    for name, label in (("langgraph", "LangGraph PostgresSaver"), ("openai_agents", "OpenAI Agents SQLAlchemySession")):
        for op in ("set", "get"):
            value = (peers.get("ratios") or {}).get(op, {}).get(f"service/{name}")
            rows.append(_at_least(f"{op}: SessionService ahead of {label}", value, 1.0, "x", strict=True))
    rows += _pipeline(sections.get("pipeline", {}))
    cleanup = sections.get("cleanup", {})
    runs = cleanup.get("runs") or []
    for run in runs:
        rows.append(
            _at_least(
                f"cleanup >= 200,000 released/s (batch {run['batch_size']})", run["released_per_s"], 200_000, "/s"
            )
        )
    lat = cleanup.get("latency") or {}
    rows.append(_at_most("p99 during cleanup <= 2x without", lat.get("p99_ratio"), 2.0, "x"))
    retention = cleanup.get("retention") or {}
    rows.append(
        _at_least(
            "retention >= 300,000 orphaned rows deleted/s",
            (retention.get("alone") or {}).get("deleted_per_s"),
            300_000,
            "/s",
        )
    )
    rows.append(
        _at_most(
            "p99 of lock operations during retention <= 2x without",
            (retention.get("latency") or {}).get("p99_ratio"),
            2.0,
            "x",
        )
    )
    rows += _slow_turns(sections.get("slowturns", {}))
    rows += _streams(sections.get("streams", {}))
    cold = sections.get("coldstart", {})
    label = (
        f"cold import of {cold.get('module', 'app.lambda_handler')} <= 1.1x bare import of the request path's packages"
    )
    rows.append(_at_most(label, cold.get("ratio_app/deps"), 1.1, "x"))
    rows += _telemetry(sections.get("telemetry", {}))
    return rows


def _telemetry(section: dict[str, Any]) -> list[dict[str, Any]]:
    put, cold = section.get("throughput") or {}, section.get("cold_import") or {}
    return [
        _at_least(
            "telemetry off (no OTEL_*): msg/s >= 0.97x without instrumentation (in process)",
            put.get("ratio_off/none"),
            0.97,
            "x",
        ),
        _at_most(
            "telemetry off: the OpenTelemetry API adds <= 0.05 to the Lambda handler's cold import "
            "(its import after the request path's other packages)",
            cold.get("api_margin_share_of_unset"),
            0.05,
            "",
        ),
    ]


def _slow_turns(slow: dict[str, Any]) -> list[dict[str, Any]]:
    run = slow.get("async agent") or {}
    turns = slow.get("turns")
    return [
        _at_most(
            f"slow turns: {turns or 1000} async turns of {slow.get('agent_seconds', 2):g} s on one process, "
            "wall time <= 2x one turn",
            run.get("wall_s") and run["wall_s"] / slow["agent_seconds"],
            2.0,
            "x",
        ),
        _at_most("slow turns: /api/health p99 <= 100 ms meanwhile", run.get("health_p99_ms"), 100, " ms"),
    ]


def _streams(streams: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 22: claim + finish + at most one statement per flush interval; the loop stays free meanwhile."""
    statements = streams.get("statements") or {}
    concurrent = streams.get("concurrent") or {}
    over = statements.get("over_bound")
    rows = [
        {
            "target": "streams: statements per streamed reply <= claim + finish + one per STREAM_FLUSH_MS",
            "value": None if over is None else f"max {statements['per_reply_max']}, bound {statements['bound']}",
            "status": "not measured" if over is None else "met" if over == 0 else f"MISSED: {over} replies over",
            **({} if over is None else {"met": over == 0}),
        },
        _at_most(
            "streams: a stop sent to another instance ends the stream within 1 s (max over the samples)",
            (streams.get("stop") or {}).get("max_ms"),
            1000,
            " ms",
        ),
        _at_most(
            f"streams: /api/health p99 <= 100 ms during {streams.get('streams') or 1000} concurrent streams",
            concurrent.get("health_p99_ms"),
            100,
            " ms",
        ),
    ]
    if concurrent:
        bad = concurrent.get("other", 0)
        rows.append(
            {
                "target": "streams: every concurrent stream ends complete",
                "value": f"{bad} incomplete",
                "status": "met" if bad == 0 else f"MISSED: {bad} streams",
                "met": bad == 0,
            }
        )
    return rows


def _pipeline(pipe: dict[str, Any]) -> list[dict[str, Any]]:
    http = pipe.get("http") or {}
    two = (http.get("2 workers, history 20") or {}).get("window") or {}
    rows = [
        _at_least("pipeline: >= 500 messages/s end to end (uvicorn --workers 2)", two.get("messages_per_s"), 500, "/s")
    ]
    for label, trips in (pipe.get("round_trips") or {}).items():
        rows.append(
            _at_most(
                f"pipeline, {label}: <= 2 round trips per message on a free device (most seen)",
                trips.get("per_message_max"),
                2,
                "",
            )
        )
    rows.append(
        _at_least(
            "pipeline: msg/s with agent history 20 >= 0.9x without (2 workers, side by side)",
            pipe.get("history_msg_s_ratio"),
            0.9,
            "x",
        )
    )
    rows.append(
        _at_least(
            "pipeline: msg/s with 2 workers >= 1.5x the commit before the async runtime",
            pipe.get("before_msg_s_ratio"),
            1.5,
            "x",
        )
    )
    rows.append(
        _at_most(
            "pipeline: p99 of POST /api/chat during cleanup <= 2x without",
            (pipe.get("cleanup") or {}).get("p99_ratio"),
            2.0,
            "x",
        )
    )
    runs = [run for run in (*http.values(), pipe.get("cleanup")) if run and "all_requests" in run]
    if not runs:
        rows.append({"target": "pipeline: 0 non-200 or degraded responses", "value": None, "status": "not measured"})
    else:
        bad = sum(run["all_requests"]["non_200"] + run["all_requests"]["degraded"] for run in runs)
        total = sum(run["all_requests"]["requests"] for run in runs)
        rows.append(
            {
                "target": "pipeline: 0 non-200 or degraded responses",
                "value": f"{bad:,} of {total:,}",
                "status": "met" if bad == 0 else f"MISSED: {bad:,} requests",
                "met": bad == 0,
            }
        )
    return rows


def _at_least(target: str, value: float | None, goal: float, unit: str, strict: bool = False) -> dict[str, Any]:
    if value is None:
        return {"target": target, "value": None, "status": "not measured"}
    met = value > goal if strict else value >= goal
    status = "met" if met else f"MISSED by {(goal - value) / goal:.0%}" if value < goal else "MISSED (tie)"
    return {"target": target, "value": _fmt(value, unit), "status": status, "met": met}


def _at_most(target: str, value: float | None, goal: float, unit: str) -> dict[str, Any]:
    if value is None:
        return {"target": target, "value": None, "status": "not measured"}
    met = value <= goal
    status = "met" if met else f"MISSED by {(value - goal) / goal:.0%}"
    return {"target": target, "value": _fmt(value, unit), "status": status, "met": met}


def _fmt(value: float, unit: str) -> str:
    if unit == "/s":
        return f"{value:,.0f}{unit}"
    return f"{value}" if isinstance(value, int) else f"{value:.2f}{unit}"

"""The issue's targets, checked against a run's results: met, or missed by how much."""

from __future__ import annotations

from typing import Any


def evaluate(sections: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    locks = sections.get("locks", {}).get("ratios") or {}
    for op in ("get", "set", "mix"):
        value = locks.get(op, {}).get("service/bare_psycopg")
        rows.append(_at_least(f"{op}: SessionService >= 0.8x bare psycopg", value, 0.8, "x"))
    for op in ("get", "set", "mix"):
        value = locks.get(op, {}).get("service/naive_orm")
        rows.append(_at_least(f"{op}: SessionService >= 4x naive ORM", value, 4.0, "x"))
    peers = sections.get("peers", {})
    for name, label in (("langgraph", "LangGraph PostgresSaver"), ("openai_agents", "OpenAI Agents SQLAlchemySession")):
        for op in ("set", "get"):
            value = (peers.get("ratios") or {}).get(op, {}).get(f"service/{name}")
            rows.append(_at_least(f"{op}: SessionService ahead of {label}", value, 1.0, "x", strict=True))
    cleanup = sections.get("cleanup", {})
    runs = cleanup.get("runs") or []
    for run in runs:
        rows.append(_at_least(f"cleanup >= 200,000 released/s (batch {run['batch_size']})",
                              run["released_per_s"], 200_000, "/s"))
    lat = cleanup.get("latency") or {}
    rows.append(_at_most("p99 during cleanup <= 2x without", lat.get("p99_ratio"), 2.0, "x"))
    cold = sections.get("coldstart", {})
    label = f"cold import of {cold.get('module', 'app.lambda_handler')} <= 1.2x bare dependency import"
    rows.append(_at_most(label, cold.get("ratio_app/deps"), 1.2, "x"))
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
    return f"{value:,.0f}{unit}" if unit == "/s" else f"{value:.2f}{unit}"

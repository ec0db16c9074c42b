"""Section 5: cold start: import time of the Lambda entry module vs the request path's bare packages; first request.

The same figures for the commit before the lazy imports (COLD_BEFORE), from a worktree of
it, side by side in the same run: its import, first request and peak RSS over N events.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import Bench, checkout, child_env, python, ratio, table

# The packages a request imports (GET /api/health, a chat turn on the demo agents): the web
# framework and its Lambda adapter, settings, the driver and its pool, the conflict retry,
# the OpenTelemetry API (a no-op until OTEL_* configures it). SQLAlchemy and Alembic load
# with a migration or an admin import, the agent SDK with an agent that uses it.
DEPS = (
    "import fastapi, mangum, pydantic_settings, psycopg, psycopg_pool, tenacity, opentelemetry.trace, "
    "opentelemetry.metrics"
)
# What the request path imported before the lazy imports: the comparison the section made then.
DEPS_BEFORE = "import fastapi, sqlalchemy, psycopg, pydantic_settings, mangum"
# Main when the lazy imports began: SQLAlchemy was the request path's database handle.
COLD_BEFORE = "fbf8e76"


def run(b: Bench) -> dict[str, Any]:
    """Median wall time of fresh `python -c "import ..."` runs, interleaved, plus the first request and peak RSS.

    Every figure is taken for this tree and for COLD_BEFORE (its worktree first on
    PYTHONPATH, the same interpreter and packages).
    """
    runs = b.pick(10, 3)
    env = child_env(DATABASE_URL=b.url)
    module, note = entry_module(env)
    if note:
        print(note)
        b.notes.append(note)
    with checkout(COLD_BEFORE) as before:
        env_before = env | {"PYTHONPATH": str(before)}
        commands: dict[str, tuple[str, dict[str, str]]] = {
            "app": (f"import {module}", env),
            "deps": (DEPS, env),
            "app_before": ("import app.lambda_handler", env_before),
            "deps_before": (DEPS_BEFORE, env),
            "interpreter": ("pass", env),
        }
        for code, where in commands.values():  # not timed: writes .pyc files and warms the page cache
            _check(python(["-c", code], where, cwd=_cwd(where)), code)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, (code, where) in commands.items():
                started = time.perf_counter()
                _check(python(["-c", code], where, cwd=_cwd(where)), code)
                times[name].append((time.perf_counter() - started) * 1000)
        median = {name: round(statistics.median(values), 1) for name, values in times.items()}
        base = median["interpreter"]
        out: dict[str, Any] = {
            "runs": runs,
            "module": module,
            "note": note,
            "before_commit": COLD_BEFORE,
            "commands": {name: code for name, (code, _) in commands.items()},
            "median_ms": median,
            "runs_ms": {name: [round(v, 1) for v in values] for name, values in times.items()},
            "ratio_app/deps": ratio(median["app"], median["deps"]),
            "ratio_app/deps_without_interpreter": ratio(median["app"] - base, median["deps"] - base),
            "ratio_app_before/deps_before": ratio(median["app_before"], median["deps_before"]),
            "ratio_app/app_before": ratio(median["app"], median["app_before"]),
        }
        processes, events = b.pick(5, 2), b.pick(1000, 100)
        out["first_request"] = first_request(env, processes)
        out["first_request_before"] = first_request(env_before, processes)
        out["rss"] = peak_rss(env, events)
        out["rss_before"] = peak_rss(env_before, events)
    _print(out)
    return out


def _cwd(env: dict[str, str]) -> Path | None:
    # The commit before runs from its own tree: the interpreter puts the working directory first.
    return Path(env["PYTHONPATH"]) if "PYTHONPATH" in env else None


def entry_module(env: dict[str, str]) -> tuple[str, str | None]:
    """app.lambda_handler if it imports, else app.main (and why)."""
    proc = python(["-c", "import app.lambda_handler"], env)
    if proc.returncode == 0:
        return "app.lambda_handler", None
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return "app.main", f"app.lambda_handler is not importable ({last}): measured `import app.main` instead"


def first_request(env: dict[str, str], processes: int) -> dict[str, Any]:
    """Each fresh process imports the handler and times handler(event, context) with the DB connect."""
    results = []
    for _ in range(processes):
        proc = python(["-m", "bench.probe", "first"], env, cwd=_cwd(env))
        _check(proc, "bench.probe first")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first_ms = [r["first_request_ms"] for r in results]
    return {
        "processes": processes,
        "handler": results[0]["handler"],
        "fallback_reason": results[0]["fallback_reason"],
        "status": results[0]["status"],
        "median_first_request_ms": round(statistics.median(first_ms), 1),
        "median_second_request_ms": round(statistics.median(r["second_request_ms"] for r in results), 1),
        "median_import_ms": round(statistics.median(r["import_ms"] for r in results), 1),
        "runs": results,
    }


def peak_rss(env: dict[str, str], events: int) -> dict[str, Any]:
    """Peak RSS (MiB) of one fresh process handling events GET /api/health events, and after its import and first."""
    proc = python(["-m", "bench.probe", "events", str(events)], env, cwd=_cwd(env), own_maxrss=True)
    _check(proc, "bench.probe events")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    keys = ("events", "peak_rss_mib", "peak_rss_after_import_mib", "peak_rss_after_first_event_mib", "statuses")
    return {key: out[key] for key in keys}


def _check(proc, what: str) -> None:
    if proc.returncode:
        raise RuntimeError(f"`{what}` failed with exit {proc.returncode}: {proc.stderr.strip()[-800:]}")


def _print(out: dict[str, Any]) -> None:
    med, cmd = out["median_ms"], out["commands"]
    rows = [
        [f'python -c "{cmd["app"]}"', med["app"]],
        [f'python -c "{DEPS}" (the request path\'s packages)', med["deps"]],
        [f'python -c "import app.lambda_handler" at {out["before_commit"]}', med["app_before"]],
        [f'python -c "{DEPS_BEFORE}" (before)', med["deps_before"]],
        ["python -c pass (interpreter only)", med["interpreter"]],
    ]
    print(
        f"median of {out['runs']} fresh processes each; app/deps = {out['ratio_app/deps']} "
        f"(without interpreter start: {out['ratio_app/deps_without_interpreter']}); "
        f"at {out['before_commit']}: {out['ratio_app_before/deps_before']}; "
        f"app now / app before = {out['ratio_app/app_before']}"
    )
    print(table(["command", "median ms"], rows))
    for label, fr, rss in (
        ("now", out["first_request"], out["rss"]),
        (f"at {out['before_commit']}", out["first_request_before"], out["rss_before"]),
    ):
        where = fr["handler"] + (f" — {fr['fallback_reason']}" if fr["fallback_reason"] else "")
        print(
            f"{label}: first request GET /api/health through {where}: status {fr['status']}, "
            f"import {fr['median_import_ms']} ms, first request {fr['median_first_request_ms']} ms (incl. DB connect), "
            f"second {fr['median_second_request_ms']} ms (median of {fr['processes']} processes); "
            f"peak RSS over {rss['events']:,} events {rss['peak_rss_mib']} MiB "
            f"(after import {rss['peak_rss_after_import_mib']}, after the first event "
            f"{rss['peak_rss_after_first_event_mib']})"
        )

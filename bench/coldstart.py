"""Section 5: cold start: import time of the Lambda entry module vs its bare dependencies; first request."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from bench.common import Bench, child_env, python, ratio, table

DEPS = "import fastapi, sqlalchemy, psycopg, pydantic_settings, mangum"


def run(b: Bench) -> dict[str, Any]:
    """Median wall time of fresh `python -c "import ..."` runs, interleaved, plus the first request."""
    runs = b.pick(10, 3)
    env = child_env(DATABASE_URL=b.url)
    module, note = entry_module(env)
    if note:
        print(note)
        b.notes.append(note)
    commands = {"app": f"import {module}", "deps": DEPS, "interpreter": "pass"}
    for code in commands.values():  # not timed: writes .pyc files and warms the page cache
        _check(python(["-c", code], env), code)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, code in commands.items():
            started = time.perf_counter()
            _check(python(["-c", code], env), code)
            times[name].append((time.perf_counter() - started) * 1000)
    median = {name: round(statistics.median(values), 1) for name, values in times.items()}
    base = median["interpreter"]
    out: dict[str, Any] = {
        "runs": runs,
        "module": module,
        "note": note,
        "commands": commands,
        "median_ms": median,
        "runs_ms": {name: [round(v, 1) for v in values] for name, values in times.items()},
        "ratio_app/deps": ratio(median["app"], median["deps"]),
        "ratio_app/deps_without_interpreter": ratio(median["app"] - base, median["deps"] - base),
    }
    out["first_request"] = first_request(env, b.pick(5, 2))
    _print(out)
    return out


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
        proc = python(["-m", "bench.probe", "first"], env)
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


def _check(proc, what: str) -> None:  # noqa: ANN001
    if proc.returncode:
        raise RuntimeError(f"`{what}` failed with exit {proc.returncode}: {proc.stderr.strip()[-800:]}")


def _print(out: dict[str, Any]) -> None:
    med = out["median_ms"]
    rows = [
        [f'python -c "{out["commands"]["app"]}"', med["app"]],
        [f'python -c "{DEPS}"', med["deps"]],
        ["python -c pass (interpreter only)", med["interpreter"]],
    ]
    print(
        f"median of {out['runs']} fresh processes each; app/deps = {out['ratio_app/deps']} "
        f"(without interpreter start: {out['ratio_app/deps_without_interpreter']})"
    )
    print(table(["command", "median ms"], rows))
    fr = out["first_request"]
    where = fr["handler"] + (f" — {fr['fallback_reason']}" if fr["fallback_reason"] else "")
    print(
        f"first request GET /api/health through {where}: status {fr['status']}, "
        f"import {fr['median_import_ms']} ms, first request {fr['median_first_request_ms']} ms (incl. DB connect), "
        f"second {fr['median_second_request_ms']} ms (median of {fr['processes']} processes)"
    )

"""Why a target is missed: `python -m bench.diagnose cleanup [--rows N]` or `python -m bench.diagnose imports`."""

# cleanup: the plans PostgreSQL picks for the release statement, the same statement joined back
# by ctid, and one plain UPDATE of all expired rows as the ceiling for any row-updating cleanup.
# imports: `-X importtime` of the Lambda entry module against its bare dependencies.
# Nothing here changes app/ code; variants are built from app.sessions.RELEASE_EXPIRED at run time.

from __future__ import annotations

import argparse
import collections
import statistics
import time
from typing import Any

import sqlalchemy as sa

from app.core import migrate
from app.core.db import run_batches
from app.sessions import RELEASE_EXPIRED
from bench.cleanup import LIVE_EVERY, populate
from bench.coldstart import DEPS, entry_module
from bench.common import Bench, child_env, python, table
from tests.utils.postgres import postgres_server, scratch_database

PLAIN_UPDATE = """
UPDATE conversation_states SET active_agent = NULL, locked_at = NULL, expires_at = NULL, version = version + 1
WHERE active_agent IS NOT NULL AND expires_at <= now()
"""


def tid_variant(sql: str) -> str | None:
    """RELEASE_EXPIRED with the batch joined back by ctid = ANY(ARRAY(...)) instead of the primary key."""
    select = "SELECT tenant_id, device_id, session_id, active_agent FROM conversation_states"
    join = "    FROM batch\n    WHERE s.tenant_id = batch.tenant_id AND s.device_id = batch.device_id"
    if select not in sql or join not in sql:
        return None  # the statement changed shape: this variant no longer applies
    sql = sql.replace(select, "SELECT ctid AS tid, " + select.removeprefix("SELECT "))
    return sql.replace(join, "    WHERE s.ctid = ANY(ARRAY(SELECT tid FROM batch))")


def cleanup(rows: int) -> None:
    expired = rows - rows // LIVE_EVERY
    with postgres_server() as (server_url, origin), scratch_database(server_url, prefix="bench") as url:
        setup = sa.create_engine(url, poolclass=sa.pool.NullPool)
        migrate.upgrade(setup)
        engine = Bench(quick=False, url=url, origin=origin).engine()
        variant = tid_variant(RELEASE_EXPIRED)
        populate(setup, rows)
        print(f"{rows:,} rows, {expired:,} expired; PostgreSQL from {origin}")
        with setup.connect() as conn:
            for label, sql in (("app statement", RELEASE_EXPIRED), ("ctid join", variant)):
                for batch in (5000, 10000):
                    if sql is None:
                        continue
                    plan = conn.exec_driver_sql("EXPLAIN " + sql, {"batch": batch}).scalars().all()
                    joins = [
                        line.strip().split("  (")[0]
                        for line in plan
                        if any(k in line for k in ("Join", "Nested Loop", "Seq Scan", "Tid Scan"))
                    ]
                    print(f"plan, {label}, batch {batch}: {' / '.join(joins)}")
        results = []
        runs: list[tuple[str, str | None, int | None]] = [
            ("app statement", RELEASE_EXPIRED, 5000),
            ("app statement", RELEASE_EXPIRED, 10000),
            ("ctid join", variant, 5000),
            ("ctid join", variant, 10000),
            ("one plain UPDATE, no row lock, no audit (ceiling)", PLAIN_UPDATE, None),
        ]
        for label, sql, batch in runs:
            if sql is None:
                results.append([label, batch, None, None, "not applicable to the current statement"])
                continue
            populate(setup, rows)
            started = time.perf_counter()
            if batch is None:
                with setup.begin() as conn:
                    released = conn.exec_driver_sql(sql).rowcount
            else:
                released = run_batches(engine, sql, {}, batch_size=batch, deadline=None)
            seconds = time.perf_counter() - started
            results.append([label, batch, released, round(seconds, 2), round(released / seconds)])
            print(f"{label}, batch {batch}: {released:,} in {seconds:.2f} s", flush=True)
        print(table(["statement", "batch", "released", "seconds", "released/s"], results))
        engine.dispose()
        setup.dispose()


def _importtime(code: str) -> dict[str, tuple[int, int, int]]:
    proc = python(["-X", "importtime", "-c", code], child_env(DATABASE_URL="postgresql+psycopg://bench@/bench"))
    found: dict[str, tuple[int, int, int]] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = line.split(":", 1)[1].split("|")
        found[name.strip()] = (int(self_us), int(cumulative), len(name) - len(name.lstrip()))
    return found


def _chain(lines: list[tuple[str, int]], target: str) -> list[str]:
    """Who imported target: importtime lists a module before the one that imported it, one level less indented."""
    for i, (name, depth) in enumerate(lines):
        if name == target:
            out = [name]
            for other, other_depth in lines[i + 1 :]:
                if other_depth < depth:
                    out.append(other)
                    depth = other_depth
            return out
    return []


def imports(runs: int) -> None:
    module, note = entry_module(child_env(DATABASE_URL="postgresql+psycopg://bench@/bench"))
    if note:
        print(note)
    app_runs = [_importtime(f"import {module}") for _ in range(runs)]
    dep_runs = [_importtime(DEPS) for _ in range(runs)]
    app_total = statistics.median(sum(v[0] for v in r.values()) for r in app_runs) / 1000
    dep_total = statistics.median(sum(v[0] for v in r.values()) for r in dep_runs) / 1000
    extra = {name: v for name, v in app_runs[0].items() if name not in dep_runs[0]}
    by_package: collections.Counter[str] = collections.Counter()
    for name, (self_us, _, _) in extra.items():
        by_package[name.split(".")[0]] += self_us
    print(
        f"`import {module}`: {app_total:.0f} ms of module execution (median of {runs}, -X importtime self times); "
        f"`{DEPS}`: {dep_total:.0f} ms; modules only the app imports: {len(extra)}, "
        f"{sum(v[0] for v in extra.values()) / 1000:.0f} ms (first run)"
    )
    print(
        table(
            ["package (app-only modules)", "self ms"],
            [[name, round(us / 1000, 1)] for name, us in by_package.most_common(12)],
        )
    )
    first = app_runs[0]
    heavy = sorted(
        ((v[1], name) for name, v in extra.items() if v[1] > 10_000 and not name.startswith("app")), reverse=True
    )
    lines = [(name, depth) for name, (_, _, depth) in first.items()]
    rows: list[list[Any]] = []
    seen: set[str] = set()
    for cumulative, name in heavy:
        root = name.split(".")[0]
        if root in seen:
            continue
        seen.add(root)
        rows.append([name, round(cumulative / 1000, 1), " <- ".join(_chain(lines, name)[1:4])])
    print(table(["heavy third-party import", "cumulative ms", "imported by"], rows[:8]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.diagnose", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cleanup", help="plans and variants of the release statement")
    c.add_argument("--rows", type=int, default=1_000_000)
    i = sub.add_parser("imports", help="what the entry module imports beyond its dependencies")
    i.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if args.what == "cleanup":
        cleanup(args.rows)
    else:
        imports(args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

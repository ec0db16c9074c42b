"""Section 4: releasing expired locks, and what it does to the latency of live traffic meanwhile."""

from __future__ import annotations

import inspect
import os
import random
import threading
import time
from typing import Any

from sqlalchemy.engine import Engine

from app import SessionService
from app.cleanup import DELETE_ORPHANS
from app.core.db import run_batches
from bench.common import AGENT, DEVICE_BASE, TTL, Bench, device, maintain, percentile_ms, ratio, table

DEFAULT_BATCH = inspect.signature(SessionService.cleanup_expired_sessions).parameters["batch_size"].default
LIVE_EVERY = 10  # one row in ten holds a live lock; the other nine expired a day ago
ORPHAN_HOURS = 48  # as ORPHAN_AFTER_HOURS defaults
TRAFFIC_INTERVAL_S = 0.002  # the second thread's pace: ~500 lock operations/s, 20% of them sets


def run(b: Bench) -> dict[str, Any]:
    """Released/s at the default and a larger batch, then p99 of live traffic with and without cleanup."""
    total = b.pick(1_000_000, 50_000)
    expired = total - total // LIVE_EVERY
    engine, setup = b.engine(), b.setup_engine()
    service = SessionService(engine)
    out: dict[str, Any] = {"rows": total, "expired": expired, "runs": []}
    try:
        for batch in (None, 10_000):  # None: the method's default batch size
            populate(setup, total)
            out["runs"].append(_release(service, batch, expired))
        populate(setup, total)
        window = max(1.0, out["runs"][0]["seconds"])
        live = [device(g) for g in range(LIVE_EVERY, total + 1, LIVE_EVERY)]
        quiet = _traffic(b, live, window, during=None)
        busy = _traffic(b, live, window, during=lambda: _release(service, None, expired))
        out["latency"] = {
            "window_s": round(window, 2),
            "traffic_ops_per_s_target": round(1 / TRAFFIC_INTERVAL_S),
            "without_cleanup": quiet,
            "during_cleanup": busy,
            "p99_ratio": ratio(busy["p99_ms"], quiet["p99_ms"]),
        }
    finally:
        engine.dispose()
        setup.dispose()
    out["retention"] = retention_pass(b)
    _print(out)
    return out


def populate(engine: Engine, total: int) -> None:
    """Fresh table: `total` rows from one INSERT ... SELECT generate_series, nine in ten expired."""
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE conversation_states CASCADE")  # and what hangs off a device (drafts)
        conn.exec_driver_sql(
            """
            INSERT INTO conversation_states (device_id, active_agent, locked_at, session_ttl, expires_at)
            SELECT (%(base)s + g)::text, %(agent)s,
                   CASE WHEN g %% %(every)s = 0 THEN now() - interval '1 hour' ELSE now() - interval '2 days' END,
                   86400,
                   CASE WHEN g %% %(every)s = 0 THEN now() + interval '1 day'
                        ELSE now() - interval '1 day' - make_interval(secs => g %% 3600) END
            FROM generate_series(1, %(n)s) g
            """,
            {"base": DEVICE_BASE, "agent": AGENT, "every": LIVE_EVERY, "n": total},
        )
    maintain(engine)


def _release(service: SessionService, batch: int | None, expected: int) -> dict[str, Any]:
    load = os.getloadavg()[0]
    started = time.perf_counter()
    released = service.cleanup_expired_sessions(**({} if batch is None else {"batch_size": batch}))
    seconds = time.perf_counter() - started
    return {
        "batch_size": f"{batch:,}" if batch else f"{DEFAULT_BATCH:,} (default)",
        "released": released,
        "expected": expected,
        "seconds": round(seconds, 3),
        "released_per_s": round(released / seconds) if seconds else None,
        "loadavg_1m_before": round(load, 2),
    }


def _traffic(b: Bench, live: list[str], window: float, during) -> dict[str, Any]:
    """A second thread does get/set on the live devices; keep the latencies that fall in the window."""
    engine = b.engine()
    service = SessionService(engine)
    stop = threading.Event()
    samples: list[tuple[float, int]] = []

    def loop() -> None:
        rng = random.Random(5)
        next_at = time.perf_counter()
        while not stop.is_set():
            dev = rng.choice(live)
            t0 = time.perf_counter_ns()
            if rng.random() < 0.2:
                service.set_session_lock(dev, AGENT, ttl=TTL)
            else:
                service.get_session_lock(dev)
            samples.append((time.perf_counter(), time.perf_counter_ns() - t0))
            next_at += TRAFFIC_INTERVAL_S
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = time.perf_counter()  # fell behind: do not burst to catch up

    worker = threading.Thread(target=loop, name="bench-traffic", daemon=True)
    worker.start()
    time.sleep(0.5)  # connection made and statements prepared before the window opens
    start = time.perf_counter()
    result = during() if during else time.sleep(window)
    end = time.perf_counter()
    stop.set()
    worker.join()
    engine.dispose()
    inside = [lat for at, lat in samples if start <= at <= end]
    return {
        "seconds": round(end - start, 3),
        "ops": len(inside),
        "p50_ms": percentile_ms(inside, 50),
        "p99_ms": percentile_ms(inside, 99),
        "max_ms": max(inside) / 1e6 if inside else None,
        "cleanup": result,
    }


def retention_pass(b: Bench) -> dict[str, Any]:
    """Orphaned rows deleted per second by the retention statement, then live traffic's p99 with and without it."""
    orphans = b.pick(500_000, 20_000)
    live = orphans // (LIVE_EVERY - 1)  # one row in ten holds a live lock, as above
    settings = b.settings()
    engine, setup = b.engine(), b.setup_engine()
    out: dict[str, Any] = {
        "orphans": orphans,
        "live_rows": live,
        "orphan_after_hours": ORPHAN_HOURS,
        "batch_size": settings.cleanup_batch_size,
        "statement": "app.cleanup.DELETE_ORPHANS",
    }

    def delete() -> dict[str, Any]:
        load = os.getloadavg()[0]
        started = time.perf_counter()
        deleted = run_batches(
            engine, DELETE_ORPHANS, {"hours": ORPHAN_HOURS}, batch_size=settings.cleanup_batch_size, deadline=None
        )
        seconds = time.perf_counter() - started
        return {
            "deleted": deleted,
            "expected": orphans,
            "seconds": round(seconds, 3),
            "deleted_per_s": round(deleted / seconds) if seconds else None,
            "loadavg_1m_before": round(load, 2),
        }

    try:
        populate_orphans(setup, orphans, live)
        out["alone"] = delete()
        populate_orphans(setup, orphans, live)
        window = max(1.0, out["alone"]["seconds"])
        devices = [device(orphans + g) for g in range(1, live + 1)]
        quiet = _traffic(b, devices, window, during=None)
        busy = _traffic(b, devices, window, during=delete)
        out["latency"] = {
            "window_s": round(window, 2),
            "traffic_ops_per_s_target": round(1 / TRAFFIC_INTERVAL_S),
            "without_retention": quiet,
            "during_retention": busy,
            "p99_ratio": ratio(busy["p99_ms"], quiet["p99_ms"]),
        }
        with setup.connect() as conn:  # the live rows must have survived both passes
            out["live_rows_left"] = conn.exec_driver_sql("SELECT count(*) FROM conversation_states").scalar()
    finally:
        engine.dispose()
        setup.dispose()
    return out


def populate_orphans(engine: Engine, orphans: int, live: int) -> None:
    """Fresh table: `orphans` idle rows (no lock, no lease, no pending message) last active 3 days ago, then
    `live` rows holding a lock, each from one INSERT ... SELECT generate_series."""
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE conversation_states, conversation_messages CASCADE")
        conn.exec_driver_sql(
            """
            INSERT INTO conversation_states
                (device_id, session_ttl, context, created_at, updated_at, last_activity_at, session_id)
            SELECT (%(base)s + g)::text, 86400, '{"user_preferences": {"language": "en"}}',
                   now() - interval '10 days', now() - interval '3 days' - make_interval(secs => g %% 3600),
                   now() - interval '3 days' - make_interval(secs => g %% 3600), 'sess_' || g
            FROM generate_series(1, %(n)s) g
            """,
            {"base": DEVICE_BASE, "n": orphans},
        )
        conn.exec_driver_sql(
            "INSERT INTO conversation_states (device_id, active_agent, locked_at, session_ttl, expires_at) "
            "SELECT (%(base)s + g)::text, %(agent)s, now(), 86400, now() + interval '1 day' "
            "FROM generate_series(%(first)s::integer, %(last)s::integer) g",
            {"base": DEVICE_BASE, "agent": AGENT, "first": orphans + 1, "last": orphans + live},
        )
    maintain(engine)


def _print(out: dict[str, Any]) -> None:
    print(f"{out['rows']:,} rows, {out['expired']:,} holding expired locks")
    rows = [[r["batch_size"], r["released"], r["seconds"], r["released_per_s"]] for r in out["runs"]]
    busy = out["latency"]["during_cleanup"]["cleanup"]
    rows.append([f"{busy['batch_size']}, with live traffic", busy["released"], busy["seconds"], busy["released_per_s"]])
    print(table(["batch size", "released", "seconds", "released/s"], rows))
    lat = out["latency"]
    rows = [
        [name, lat[key]["ops"], lat[key]["p50_ms"], lat[key]["p99_ms"], lat[key]["max_ms"]]
        for name, key in (("without cleanup", "without_cleanup"), ("during cleanup", "during_cleanup"))
    ]
    print(
        f"live traffic (~{lat['traffic_ops_per_s_target']} op/s, 80% get / 20% set), window {lat['window_s']} s; "
        f"p99 during/without = {lat['p99_ratio']}"
    )
    print(table(["traffic", "ops", "p50 ms", "p99 ms", "max ms"], rows))
    ret = out["retention"]
    alone, rl = ret["alone"], ret["latency"]
    busy = rl["during_retention"]["cleanup"]
    print(
        f"retention: {ret['orphans']:,} orphaned rows (last active 3 days ago; no lock, lease or "
        f"pending message) beside {ret['live_rows']:,} locked rows; run_batches(DELETE_ORPHANS, hours="
        f"{ret['orphan_after_hours']}, batch_size={ret['batch_size']:,}); locked rows left: {ret['live_rows_left']:,}"
    )
    print(
        table(
            ["run", "deleted", "seconds", "deleted/s"],
            [
                ["alone", alone["deleted"], alone["seconds"], alone["deleted_per_s"]],
                ["with live traffic", busy["deleted"], busy["seconds"], busy["deleted_per_s"]],
            ],
        )
    )
    print(
        f"live traffic (~{rl['traffic_ops_per_s_target']} op/s) in {rl['window_s']} s windows; "
        f"p99 during/without = {rl['p99_ratio']}"
    )
    print(
        table(
            ["traffic", "ops", "p50 ms", "p99 ms", "max ms"],
            [
                [name, rl[key]["ops"], rl[key]["p50_ms"], rl[key]["p99_ms"], rl[key]["max_ms"]]
                for name, key in (("without retention", "without_retention"), ("during retention", "during_retention"))
            ],
        )
    )

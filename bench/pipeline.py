"""Section 3: the pipeline end to end: POST /api/chat under uvicorn (1 and 2 workers), round trips, cleanup."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from typing import Any

from sqlalchemy.engine import Engine

from app.agents import load_registry
from app.cleanup import run_cleanup
from app.pipeline import Inbound, Pipeline
from bench.chatload import EXPECTED_LOCK, SCRIPT, ChatLoad, totals, web_devices, window_stats
from bench.common import AGENT, BEFORE, DEVICE_BASE, Bench, checkout, maintain, ratio, table
from bench.serve import CpuMeter, postmaster_pid, uvicorn
from tests.utils import aio
from tests.utils.counting import count_statements

THREADPOOL = 40  # Starlette runs sync routes on anyio's default limiter: at most 40 at once per worker
CHAT_WAIT_SECONDS = 120
TABLES = "conversation_messages, conversation_audit, conversation_states, cleanup_runs"
# name: (workers, what `python -m` runs). The last is a diagnostic, not the command the targets are about.
CONFIGS = {
    "1 worker": (1, "uvicorn"),
    "2 workers": (2, "uvicorn"),
    "2 workers, TCP_NODELAY restored": (2, "bench.nodelay"),
}
# Agent history on (the default, 20 messages) and off, side by side: the history is
# folded into the claim and finish statements, so it must cost no round trip.
HISTORY = {"history 20": 20, "history off": 0}
SHARED_CORES = (
    "the load generator runs on the same machine as the server and PostgreSQL and shares "
    "its cores with them: its CPU share is reported next to each figure"
)

# The HTTP table's columns (bench/report.py prints it as markdown, with the per-second spread).
HEADERS = ["server", "pool", "window s", "messages", "msg/s", "p50 ms", "p99 ms", "non-200", "degraded"]
HEADERS += ["unexpected", "xact/msg", "client CPU", "server CPU", "PG CPU", "machine busy"]


def run(b: Bench) -> dict[str, Any]:
    """Round trips in-process, then HTTP load with 1 and 2 workers, then 2 workers during a lock cleanup."""
    clients, devices = b.pick((64, 1000), (16, 100))
    warmup, window, quiet = b.pick((3.0, 15.0, 8.0), (0.3, 1.0, 0.5))
    expired = b.pick(500_000, 20_000)
    setup = b.setup_engine()
    out: dict[str, Any] = {"clients": clients, "devices": devices, "script": list(SCRIPT), "note": SHARED_CORES}
    try:
        out["round_trips"] = {label: round_trips(b, b.pick(1000, 100), history) for label, history in HISTORY.items()}
        out["http"] = {}
        for name, (workers, module) in CONFIGS.items():
            if b.quick and module != "uvicorn":
                continue  # diagnostics only in full runs: quick mode must stay under a minute
            for label, history in HISTORY.items():
                if label != "history 20" and (b.quick or workers == 1 or module != "uvicorn"):
                    continue  # the side-by-side run is the 2-worker one; quick mode stays under a minute
                reset(setup)
                out["http"][f"{name}, {label}"] = http_load(
                    b, setup, workers, module, clients, devices, warmup, window, agent_history_messages=history
                )
        if not b.quick:
            # The same load on the commit before the async runtime, in the same run.
            with checkout(BEFORE) as before:
                reset(setup)
                out["http"][f"2 workers, history 20 @ {BEFORE}"] = http_load(
                    b,
                    setup,
                    2,
                    "uvicorn",
                    clients,
                    devices,
                    warmup,
                    window,
                    path_first=[str(before)],
                    agent_history_messages=20,
                )
            now, then = out["http"]["2 workers, history 20"], out["http"][f"2 workers, history 20 @ {BEFORE}"]
            out["before_msg_s_ratio"] = ratio(now["window"]["messages_per_s"], then["window"]["messages_per_s"])
        both = [out["http"].get(f"2 workers, {label}") for label in HISTORY]
        if all(both):
            out["history_msg_s_ratio"] = ratio(both[0]["window"]["messages_per_s"], both[1]["window"]["messages_per_s"])
        reset(setup)
        populate_expired(setup, expired)
        out["cleanup"] = http_during_cleanup(b, clients, devices, warmup, quiet, expired)
        reset(setup)
    finally:
        setup.dispose()
    # The 1-minute load average lags: the load generator's and the workers' threads keep it high for a while.
    b.notes.append(
        "the pipeline section's own threads (load generator, uvicorn thread pools) raise the 1-minute "
        "load average for the sections after it; their 'load before' reflects that, not other processes"
    )
    _print(out)
    return out


def reset(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {TABLES} CASCADE")  # and what hangs off a device (drafts)
    maintain(engine)


def pool_size(engine: Engine, workers: int, clients: int) -> int:
    """One connection per request a worker can run at once, within the server's max_connections."""
    with engine.connect() as conn:
        limit = int(conn.exec_driver_sql("SHOW max_connections").scalar())
    # Connections go to workers unevenly, so each worker may get most clients; keep room for the bench's own.
    return max(1, min(THREADPOOL, clients, (limit - 10) // workers))


def round_trips(b: Bench, messages: int, history: int) -> dict[str, Any]:
    """Statements per handled message: app.pipeline.Pipeline on the production engine, one message at a time."""
    settings = b.settings().model_copy(update={"agent_history_messages": history})
    engine = b.engine()
    pipeline = Pipeline(engine, load_registry(settings.agents), settings)
    conversations = web_devices(max(1, messages // len(SCRIPT)), "in-process")
    for text in SCRIPT:  # warm-up: connect, and let psycopg prepare the statements
        aio.run(pipeline.handle, Inbound("default", web_devices(1, "warm-up")[0], text))
    per_message: list[int] = []
    wrong = 0
    durations: list[float] = []
    started = time.perf_counter()
    with count_statements(engine, durations) as statements:
        for i in range(messages):
            step = i % len(SCRIPT)
            seen = len(statements)
            device = conversations[(i // len(SCRIPT)) % len(conversations)]
            result = aio.run(pipeline.handle, Inbound("default", device, SCRIPT[step], None, {"channel": "bench"}))
            per_message.append(len(statements) - seen)
            wrong += (result.status, result.agent, result.lock_agent) != ("answered", AGENT, EXPECTED_LOCK[step])
    seconds = time.perf_counter() - started
    aio.close_pools(engine)  # in the loop that opened it: its workers would be destroyed pending at exit
    engine.dispose()
    db_seconds = [sum(durations)]
    return {
        "messages": messages,
        "statements": sum(per_message),
        "per_message_mean": round(statistics.mean(per_message), 3),
        "per_message_max": max(per_message),
        "histogram": {str(k): v for k, v in sorted(Counter(per_message).items())},
        "unexpected_results": wrong,
        "messages_per_s_one_thread": round(messages / seconds, 1),
        "ms_per_message": round(seconds / messages * 1000, 3),
        "db_ms_per_message": round(db_seconds[0] / messages * 1000, 3),
    }


def http_load(
    b: Bench,
    setup: Engine,
    workers: int,
    module: str,
    clients: int,
    devices: int,
    warmup: float,
    window: float,
    *,
    path_first: list[str] | None = None,
    **settings: object,
) -> dict[str, Any]:
    """Closed-loop conversations for warmup + window seconds; figures from the messages done in the window."""
    pool = pool_size(setup, workers, clients)
    with uvicorn(
        b.url,
        workers,
        module=module,
        db_pool_size=pool,
        chat_wait_seconds=CHAT_WAIT_SECONDS,
        path_first=path_first,
        **settings,
    ) as server:
        load = ChatLoad(server.url, web_devices(devices, f"http-{workers}-{module}"), clients)
        load.start()
        try:
            time.sleep(warmup)
            meter = CpuMeter([server.process.pid, *server.worker_pids], postmaster_pid(setup))
            xacts_before = transactions(setup)
            meter.start()
            start = time.perf_counter()
            time.sleep(window)
            end = time.perf_counter()
            cpu = meter.stop()
            xacts = transactions(setup) - xacts_before
        finally:
            load.stop()
        command = server.command
    stats = window_stats(load.records, [(start, end)])
    return {
        "command": command,
        "workers": workers,
        "db_pool_size": pool,
        "warmup_s": warmup,
        "window": stats,
        "all_requests": totals(load.records),
        "cpu": cpu,
        "first_errors": load.errors[:5],
        # pg_stat_database lags by up to about a second of each backend's work: approximate.
        "server_transactions_per_message": round(xacts / stats["messages"], 2) if stats["messages"] else None,
    }


def transactions(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
            ).scalar()
        )


def populate_expired(engine: Engine, count: int) -> None:
    """`count` locks that expired a day ago, one INSERT ... SELECT generate_series, none on a load device."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO conversation_states (device_id, active_agent, locked_at, session_ttl, expires_at) "
            "SELECT (%(base)s + g)::text, %(agent)s, now() - interval '2 days', 86400, "
            "now() - interval '1 day' - make_interval(secs => g %% 3600) FROM generate_series(1, %(n)s) g",
            {"base": DEVICE_BASE, "agent": AGENT, "n": count},
        )
    maintain(engine)


def http_during_cleanup(
    b: Bench, clients: int, devices: int, warmup: float, quiet: float, expired: int
) -> dict[str, Any]:
    """2 workers under load: a quiet window, run_cleanup releasing the expired locks, another quiet window."""
    setup = b.setup_engine()
    pool, postmaster = pool_size(setup, 2, clients), postmaster_pid(setup)
    setup.dispose()
    engine = b.engine()
    settings = b.settings()
    done: dict[str, Any] = {}

    def cleanup() -> None:
        cpu0 = time.thread_time()
        done["start"] = time.perf_counter()
        done["result"] = run_cleanup(engine, settings)
        done["end"] = time.perf_counter()
        done["thread_cpu"] = time.thread_time() - cpu0

    with uvicorn(b.url, 2, db_pool_size=pool, chat_wait_seconds=CHAT_WAIT_SECONDS) as server:
        load = ChatLoad(server.url, web_devices(devices, "cleanup"), clients)
        load.start()
        try:
            time.sleep(warmup)
            meter = CpuMeter([server.process.pid, *server.worker_pids], postmaster)
            meter.start()
            t0 = time.perf_counter()
            time.sleep(quiet)
            t1 = time.perf_counter()
            cpu_quiet = meter.stop()
            meter.start()
            worker = threading.Thread(target=cleanup, name="bench-cleanup")
            worker.start()
            worker.join()
            cpu_busy = meter.stop(exclude_client=done.get("thread_cpu", 0.0))
            if "end" not in done:
                raise RuntimeError("run_cleanup failed (see the traceback above)")
            time.sleep(quiet)
            t3 = time.perf_counter()
        finally:
            load.stop()
            engine.dispose()
    before, after = (t0, t1), (done["end"], t3)
    result = done["result"]
    seconds = done["end"] - done["start"]
    out = {
        "expired": expired,
        "db_pool_size": pool,
        "workers": 2,
        "cleanup": {
            "released": result.released,
            "seconds": round(seconds, 3),
            "released_per_s": round(result.released / seconds) if seconds else None,
            "batch_size": settings.cleanup_batch_size,
            "max_seconds": settings.cleanup_max_seconds,
        },
        "without_cleanup": window_stats(load.records, [before, after]),
        "before": window_stats(load.records, [before]),
        "during_cleanup": window_stats(load.records, [(done["start"], done["end"])]),
        "after": window_stats(load.records, [after]),
        "all_requests": totals(load.records),
        "cpu_without": cpu_quiet,
        "cpu_during": cpu_busy,
        "first_errors": load.errors[:5],
    }
    out["p99_ratio"] = ratio(out["during_cleanup"]["p99_ms"], out["without_cleanup"]["p99_ms"])
    return out


def _print(out: dict[str, Any]) -> None:
    for label, rt in out["round_trips"].items():
        print(
            f"round trips, {label}: {rt['messages']:,} messages through app.pipeline.Pipeline on the production "
            f"engine, one at a time: {rt['per_message_mean']} statements per message on average, at most "
            f"{rt['per_message_max']} (histogram {rt['histogram']}); {rt['messages_per_s_one_thread']:,} "
            f"messages/s in one thread, {rt['ms_per_message']} ms per message of which "
            f"{rt['db_ms_per_message']} ms in statements"
        )
    print(
        f"HTTP: {out['clients']} client threads (httpx, keep-alive) over {out['devices']:,} devices, "
        f"conversations {' -> '.join(out['script'])}; note: {out['note']}"
    )
    rows = [http_row(name, h) for name, h in out["http"].items()]
    print(table(HEADERS, rows))
    if "history_msg_s_ratio" in out:
        print(f"2 workers, msg/s with history 20 / without: {out['history_msg_s_ratio']}")
    if "before_msg_s_ratio" in out:
        print(f"2 workers, msg/s now / at {BEFORE} (before the async runtime): {out['before_msg_s_ratio']}")
    cl = out["cleanup"]
    c = cl["cleanup"]
    print(
        f"2 workers while run_cleanup releases {cl['expired']:,} expired locks: released {c['released']:,} in "
        f"{c['seconds']} s ({c['released_per_s']:,}/s); p99 during/without = {cl['p99_ratio']}"
    )
    rows = []
    for label, key in (
        ("before", "before"),
        ("during cleanup", "during_cleanup"),
        ("after", "after"),
        ("without (before + after)", "without_cleanup"),
    ):
        w = cl[key]
        rows.append(
            [
                label,
                w["seconds"],
                w["messages"],
                w["messages_per_s"],
                w["p50_ms"],
                w["p99_ms"],
                w["max_ms"],
                w["non_200"],
                w["degraded"],
            ]
        )
    print(table(["window", "seconds", "messages", "msg/s", "p50 ms", "p99 ms", "max ms", "non-200", "degraded"], rows))


def http_row(name: str, h: dict[str, Any], *, spread: bool = False) -> list[Any]:
    """One server's row of the HTTP table (HEADERS); spread: with the per-second msg/s min-max after msg/s."""
    w, c, a = h["window"], h["cpu"], h["all_requests"]
    extra = [f"{w['per_second_min']}-{w['per_second_max']}"] if spread else []
    return [
        name,
        h["db_pool_size"],
        w["seconds"],
        w["messages"],
        w["messages_per_s"],
        *extra,
        w["p50_ms"],
        w["p99_ms"],
        a["non_200"],
        a["degraded"],
        a["unexpected_replies"],
        h["server_transactions_per_message"],
        _pct(c["client_share"]),
        _pct(c["server_share"]),
        _pct(c["postgres_share"]),
        _pct(c["machine_busy_share"]),
    ]


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"

"""Where SessionService's time goes: `python -m bench.profile [--op get|set] [--seconds S]`."""

# Runs the same lock statement through layers of the stack, from a bare psycopg connection up
# to SessionService, reporting wall and client-CPU microseconds per operation, then a
# pyinstrument profile of SessionService itself. Nothing here changes app/ code.

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import psycopg
import sqlalchemy as sa

from app import SessionService, validation
from app.core import migrate
from app.core.db import store_errors
from app.core.engine import lock_pools
from app.sessions import GET_LOCK, SET_LOCK
from bench.common import AGENT, TENANT, TTL, Bench, conninfo, device_sequence, populate_devices, run_for, table
from tests.utils.postgres import postgres_server, scratch_database

DEVICES = 100_000  # as in the locks section


def variants(b: Bench, op: str, seq: list[str]) -> tuple[dict[str, Callable[[int], Any]], Callable[[], None]]:
    """The same statement, one layer of the stack added at a time."""
    sql = GET_LOCK if op == "get" else SET_LOCK
    extra = {} if op == "get" else {"agent": AGENT, "ttl": TTL, "new_ttl": TTL}
    engine = b.engine()
    service = SessionService(engine)
    pool = lock_pools(engine).sync_pool()
    bare = psycopg.connect(conninfo(b.url), autocommit=True)
    n = len(seq)

    def params(i: int) -> dict[str, Any]:
        return {"tenant": TENANT, "device": seq[i % n], **extra}

    def spin(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    def pooled(i: int) -> Any:
        with pool.connection() as conn:
            return conn.execute(sql, params(i)).fetchone()

    def sa_pooled(i: int) -> Any:
        conn = engine.raw_connection()
        try:
            return conn.driver_connection.execute(sql, params(i)).fetchone()
        finally:
            conn.close()

    def sa_connect(i: int) -> Any:
        with store_errors(), engine.connect() as conn:
            return conn.exec_driver_sql(sql, params(i)).scalar()

    def sa_begin(i: int) -> Any:
        with store_errors(), engine.begin() as conn:
            return conn.exec_driver_sql(sql, params(i)).scalar()

    def held_validated(i: int) -> Any:
        p = {"tenant": validation.tenant_id(TENANT), "device": validation.device_id(seq[i % n]), **extra}
        with store_errors():
            return bare.execute(sql, p).fetchone()

    service_call = (
        (lambda i: service.get_session_lock(seq[i % n]))
        if op == "get"
        else (lambda i: service.set_session_lock(seq[i % n], AGENT, ttl=TTL))
    )
    found = {
        "bare psycopg (ceiling)": lambda i: bare.execute(sql, params(i)).fetchone(),
        "bare psycopg + 20 us of Python work": lambda i: (bare.execute(sql, params(i)).fetchone(), spin(20e-6)),
        "bare psycopg + validation + store_errors": held_validated,
        "app pool get/put + psycopg cursor": pooled,
        "SQLAlchemy pool checkout + psycopg cursor": sa_pooled,
        "pool + SQLAlchemy engine.connect()": sa_connect,
        "pool + SQLAlchemy engine.begin()": sa_begin,
        "SessionService": service_call,
    }

    def close() -> None:
        bare.close()
        engine.dispose()

    return found, close


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--op", choices=["get", "set"], default="get")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with postgres_server() as (server_url, origin), scratch_database(server_url, prefix="bench") as url:
        setup = sa.create_engine(url, poolclass=sa.pool.NullPool)
        migrate.upgrade(setup)
        populate_devices(setup, DEVICES)
        b = Bench(quick=False, url=url, origin=origin)
        seq = device_sequence(200_000, DEVICES, seed=7)
        found, close = variants(b, args.op, seq)
        walls: dict[str, list[float]] = {name: [] for name in found}
        cpus: dict[str, list[float]] = {name: [] for name in found}
        try:
            for _ in range(args.rounds):
                for name, call in found.items():
                    run_for(call, 0.3)
                    cpu = time.process_time()
                    sample = run_for(call, args.seconds)
                    cpus[name].append((time.process_time() - cpu) / sample.ops * 1e6)
                    walls[name].append(sample.seconds / sample.ops * 1e6)
            ceiling = min(walls["bare psycopg (ceiling)"])
            rows = [[name, min(walls[name]), min(cpus[name]), round(ceiling / min(walls[name]), 2)] for name in found]
            print(f"{args.op}: best of {args.rounds} windows of {args.seconds} s, PostgreSQL from {origin}")
            print(table(["layer", "wall us/op", "client CPU us/op", "ops/s vs bare"], rows))
            _pyinstrument(found["SessionService"], args.seconds)
        finally:
            close()
            setup.dispose()
    return 0


def _pyinstrument(call: Callable[[int], Any], seconds: float) -> None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("pyinstrument is not installed (pip install -e '.[bench]'): no profile")
        return
    profiler = Profiler(interval=0.0001)
    profiler.start()
    run_for(call, seconds)
    profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    raise SystemExit(main())

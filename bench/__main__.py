"""Runner: `python -m bench [--quick] [--only SECTION ...]`; prints tables, writes bench/results/latest.json."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from app.core import migrate
from bench.common import RESULTS, Bench, machine_info, table
from bench.targets import evaluate
from tests.utils import aio
from tests.utils.postgres import postgres_server, scratch_database

# One module per section, in the numbering; None marks a section still to be written.
SECTIONS: dict[str, str | None] = {
    "locks": "bench.locks",
    "peers": "bench.peers",
    "pipeline": "bench.pipeline",
    "cleanup": "bench.cleanup",
    "coldstart": "bench.coldstart",
    "memory": "bench.memory",
    "slowturns": "bench.slowturns",
    "telemetry": "bench.telemetry",
    "streams": "bench.streams",
    "inbox": "bench.inbox",
    "outage": "bench.outage",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes and short windows (CI: it runs, < 1 min)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run only these sections")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    chosen = [name for name in SECTIONS if not args.only or name in args.only]
    flags = (["--quick"] if args.quick else []) + (["--only", *args.only] if args.only else [])
    command = " ".join(["python -m bench", *flags])
    started = time.perf_counter()
    failed: list[str] = []
    with postgres_server() as (server_url, origin), scratch_database(server_url, prefix="bench") as url:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        migrate.upgrade(engine)
        bench = Bench(quick=args.quick, url=url, origin=origin)
        report: dict[str, Any] = {
            "command": command,
            "mode": "quick" if args.quick else "full",
            "machine": machine_info(engine, origin),
            "sections": {},
        }
        engine.dispose()
        m = report["machine"]
        if args.quick:
            bench.notes.append(
                "quick mode checks that every section runs; its sizes and windows are too small "
                "for the figures to mean much: use `make bench` for numbers"
            )
        if m["loadavg_1m_at_start"] > 1.0:
            # Durable commits slow down when other processes hold the CPU: say so next to the numbers.
            bench.notes.append(
                f"load average {m['loadavg_1m_at_start']} at start: other processes were busy, "
                "expect noisy and lower numbers (especially sets)"
            )
            print(f"warning: {bench.notes[-1]}", flush=True)
        print(
            f"{command}: {m['date']}, {m['cores']} cores ({m['cpu']}), PostgreSQL {m['postgres_version']} "
            f"from {origin}, fsync={m['postgres_settings']['fsync']}",
            flush=True,
        )
        for name in chosen:
            report["sections"][name] = _section(name, bench, failed)
    aio.stop()  # the loop of the in-process pipeline runs (its thread would keep the process alive)
    report["targets"] = evaluate(report["sections"])
    report["notes"] = bench.notes
    report["failed_sections"] = failed
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    _print_targets(report["targets"])
    for note in bench.notes:
        print(f"note: {note}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {args.output} in {report['total_seconds']} s" + (f"; FAILED sections: {failed}" if failed else ""))
    return 1 if failed else 0


def _section(name: str, bench: Bench, failed: list[str]) -> dict[str, Any]:
    print(f"\n== {name} ==", flush=True)
    module = SECTIONS[name]
    if module is None:
        print(f"{name}: not yet implemented")
        return {"status": "not yet implemented"}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        run: Callable[[Bench], dict[str, Any]] = import_module(module).run
        result = run(bench)
    except Exception as err:  # noqa: BLE001 - one broken section must not hide the others' numbers
        traceback.print_exc()
        failed.append(name)
        result = {"error": f"{type(err).__name__}: {err}"}
    result["seconds"] = round(time.perf_counter() - started, 1)
    # A busy machine slows durable commits: keep the load next to the numbers.
    result["loadavg_1m_before"] = round(load, 2)
    sys.stdout.flush()
    return result


def _print_targets(targets: list[dict[str, Any]]) -> None:
    print("\n== targets ==")
    rows = [[t["target"], t["value"], t["status"]] for t in targets]
    print(table(["target", "measured", "status"], rows))


if __name__ == "__main__":
    sys.exit(main())

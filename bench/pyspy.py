"""Where a uvicorn worker's time goes under the chat load: `python -m bench.pyspy [--workers N] [--seconds S]`.

Starts PostgreSQL and the app as section 3 does, drives the same conversations, and
records one worker with `py-spy record --gil` (only samples of the thread holding the
GIL: what the worker's one Python core is busy with). Prints the share of samples by
layer (innermost frame that matches one) and by function (inclusive and self), and
writes them with the raw stacks to bench/results/pyspy-worker.json. Changes no app/ code.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from app.core import migrate
from bench.chatload import ChatLoad, web_devices, window_stats
from bench.common import RESULTS, table
from bench.pipeline import CHAT_WAIT_SECONDS, pool_size
from bench.serve import uvicorn
from tests.utils.postgres import postgres_server, scratch_database

# Checked in order against each frame's file, innermost frame first: the first layer found takes the sample.
LAYERS = [
    ("psycopg / libpq", r"^psycopg/"),
    ("sqlalchemy (pool, events)", r"^sqlalchemy/"),
    ("json", r"^json/"),
    ("pydantic", r"^pydantic(_core)?/"),
    ("logging", r"^logging/"),
    ("threading / queue (thread pool hand-off)", r"^(threading|queue)\.py"),
    ("app/ (pipeline, ledger, agents, routes)", r"^app/"),
    ("anyio (thread pool)", r"^anyio/"),
    ("fastapi", r"^fastapi/"),
    ("starlette", r"^starlette/"),
    ("uvicorn / h11", r"^(uvicorn|h11)/"),
    ("asyncio, selectors", r"^(asyncio/|selectors\.py)"),
]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pyspy", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--module", default="uvicorn", help="uvicorn, or bench.nodelay")
    parser.add_argument("--app", default="app.main:create_app", help="the app factory to profile")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=200, help="samples/s; 0: no profile, only the load's figures")
    args = parser.parse_args()
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if args.rate and not spy:
        print("py-spy not found (pip install py-spy)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-pyspy-") as tmp:
        raw = Path(tmp) / "stacks.txt"
        with postgres_server() as (server_url, _), scratch_database(server_url, prefix="bench") as url:
            engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
            migrate.upgrade(engine)
            pool = pool_size(engine, args.workers, args.clients)
            engine.dispose()
            with uvicorn(
                url,
                args.workers,
                module=args.module,
                app=args.app,
                db_pool_size=pool,
                chat_wait_seconds=CHAT_WAIT_SECONDS,
            ) as server:
                load = ChatLoad(server.url, web_devices(args.devices, "pyspy"), args.clients)
                load.start()
                try:
                    time.sleep(3)
                    pid = server.worker_pids[0]
                    start = time.perf_counter()
                    if args.rate:
                        rec = subprocess.run(
                            [
                                spy,
                                "record",
                                "--pid",
                                str(pid),
                                "--duration",
                                str(round(args.seconds)),
                                "--rate",
                                str(args.rate),
                                "--gil",
                                "--nonblocking",
                                "--format",
                                "raw",
                                "--output",
                                str(raw),
                            ],
                            capture_output=True,
                            text=True,
                            check=False,
                        )  # the return code is checked below
                    else:
                        time.sleep(args.seconds)
                    end = time.perf_counter()
                finally:
                    load.stop()
        stats = window_stats(load.records, [(start, end)])
        spied = f"py-spy --gil --nonblocking at {args.rate} Hz on worker {pid}" if args.rate else "no profiler"
        print(
            f"{server.command} ({args.workers} worker(s), pool {pool}), {args.clients} clients over "
            f"{args.devices:,} devices; {spied} for {args.seconds} s; meanwhile {stats['messages_per_s']} "
            f"messages/s (all workers), p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms, "
            f"non-200 {stats['non_200']}"
        )
        if not args.rate:
            return 0
        if rec.returncode:
            print(rec.stderr, file=sys.stderr)
            return 1
        summary = summarize(raw, args.seconds * args.rate)
    RESULTS.mkdir(parents=True, exist_ok=True)
    output = RESULTS / "pyspy-worker.json"
    output.write_text(json.dumps({"command": server.command, "args": vars(args), "load": stats, **summary}, indent=1))
    print(f"wrote {output}")
    return 0


def summarize(raw: Path, possible: float) -> dict[str, Any]:
    """Shares of GIL-holding samples by layer and by function; 'possible' is the samples of a fully busy GIL."""
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text().splitlines():
        head, _, count = line.rpartition(" ")
        if head and count.isdigit():
            stacks.append((head.split(";"), int(count)))
    total = sum(n for _, n in stacks)
    print(
        f"{total:,} samples with the GIL held, of {possible:,.0f} possible: the GIL was held "
        f"{total / possible:.0%} of the time"
    )
    layers: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        layers[_layer(frames)] += n
        for name in {_function(f) for f in frames}:
            inclusive[name] += n
        own[_function(frames[-1])] += n
    print(
        table(
            ["layer (innermost matching frame)", "share"],
            [[name, f"{n / total:.1%}"] for name, n in layers.most_common()],
        )
    )
    print(
        table(["function (inclusive)", "share"], [[name, f"{n / total:.1%}"] for name, n in inclusive.most_common(40)])
    )
    print(table(["function (self)", "share"], [[name, f"{n / total:.1%}"] for name, n in own.most_common(25)]))
    return {
        "samples": total,
        "possible": possible,
        "layers": dict(layers.most_common()),
        "inclusive": dict(inclusive.most_common(60)),
        "self": dict(own.most_common(60)),
        "stacks": {";".join(frames): n for frames, n in stacks},
    }


def _function(frame: str) -> str:
    """'name (path:line)' without the line number."""
    return re.sub(r":\d+\)$", ")", frame)


def _layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        path = frame.rsplit("(", 1)[-1]  # py-spy shortens paths to the package part: "psycopg/cursor.py:12)"
        for name, pattern in LAYERS:
            if re.search(pattern, path):
                return name
    return "other"


if __name__ == "__main__":
    sys.exit(main())

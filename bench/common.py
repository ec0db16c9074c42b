"""Shared helpers: the bench context, timed loops, connection strings, machine info, tables."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from app.core.config import Settings
from app.core.engine import Engine as AppEngine
from app.core.engine import make_engine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TENANT = "default"
AGENT = "scheduling"
TTL = 3600
# Device ids look like WhatsApp phone numbers, so pgbench can build them from an integer.
DEVICE_BASE = 15550000000


@dataclass
class Bench:
    """What every section gets: the mode, the scratch database and a place for notes."""

    quick: bool
    url: str
    origin: str
    notes: list[str] = field(default_factory=list)

    def settings(self, **overrides: Any) -> Settings:
        # A bench drives thousands of messages through a few devices: the abuse limits stay off.
        values = {"database_url": self.url, "_env_file": None} | NO_RATE_LIMITS
        return Settings(**(values | overrides))

    def engine(self, **overrides: Any) -> AppEngine:
        """The production handle (psycopg pools, auto-prepare; SQLAlchemy's AUTOCOMMIT engine on first use)."""
        return make_engine(self.settings(**overrides))

    def setup_engine(self) -> Engine:
        """For filling and maintaining tables: no statement timeout, no pool."""
        return sa.create_engine(self.url, poolclass=sa.pool.NullPool)

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


# RATE_LIMIT_PER_DEVICE and RATE_LIMIT_NEW_DEVICES off (0): the claim still counts, so the cost is measured.
# The last commit before the async runtime (main at the start of that round): sections that
# compare with it run it from a worktree, side by side in the same run (full mode).
BEFORE = "3fb1da3"


@contextlib.contextmanager
def checkout(commit: str) -> Iterator[Path]:
    """A detached worktree of commit (its app serves from there through uvicorn's path_first), removed after."""
    with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), commit], check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


NO_RATE_LIMITS = {"rate_limit_per_device": 0, "rate_limit_new_devices": 0}


def device(n: int) -> str:
    return str(DEVICE_BASE + n)


def device_sequence(count: int, devices: int, seed: int) -> list[str]:
    """A fixed random sequence of device ids, so every implementation does the same work."""
    rng = random.Random(seed)
    return [device(rng.randint(1, devices)) for _ in range(count)]


def populate_devices(engine: Engine, count: int) -> None:
    """Give devices 1..count a live lock (rows already there are left alone)."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO conversation_states (device_id, active_agent, locked_at, session_ttl, expires_at) "
            "SELECT (%(base)s + g)::text, %(agent)s, now(), 86400, now() + interval '1 day' "
            "FROM generate_series(1, %(n)s) g ON CONFLICT DO NOTHING",
            {"base": DEVICE_BASE, "agent": AGENT, "n": count},
        )
    maintain(engine)


def maintain(engine: Engine) -> None:
    """VACUUM ANALYZE and CHECKPOINT, so leftovers of setup do not land in a timed window."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE conversation_states")
        try:
            conn.exec_driver_sql("CHECKPOINT")
        except sa.exc.DBAPIError:  # needs superuser or pg_checkpoint: fine to skip on a shared server
            pass


@dataclass
class Sample:
    """Operations done in one timed window, with each one's latency."""

    ops: int
    seconds: float
    latencies_ns: list[int]

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


def run_for(op: Callable[[int], object], seconds: float, max_ops: int | None = None) -> Sample:
    """Call op(i) for i = 0, 1, ... until `seconds` have passed; one clock read per call."""
    clock = time.perf_counter_ns
    latencies: list[int] = []
    start = now = clock()
    deadline = start + int(seconds * 1e9)
    i = 0
    while now < deadline and (max_ops is None or i < max_ops):
        op(i)
        after = clock()
        latencies.append(after - now)
        now = after
        i += 1
    return Sample(i, (now - start) / 1e9, latencies)


async def run_for_async(op: Callable[[int], Awaitable[object]], seconds: float, max_ops: int | None = None) -> Sample:
    """run_for for coroutines, awaited one at a time on the caller's loop."""
    clock = time.perf_counter_ns
    latencies: list[int] = []
    start = now = clock()
    deadline = start + int(seconds * 1e9)
    i = 0
    while now < deadline and (max_ops is None or i < max_ops):
        await op(i)
        after = clock()
        latencies.append(after - now)
        now = after
        i += 1
    return Sample(i, (now - start) / 1e9, latencies)


def percentile_ms(latencies_ns: list[int], pct: float) -> float | None:
    if not latencies_ns:
        return None
    ordered = sorted(latencies_ns)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index] / 1e6


def summarize(samples: list[Sample]) -> dict[str, Any]:
    """Median ops/s over rounds, and latency percentiles over all of them."""
    pooled = [lat for s in samples for lat in s.latencies_ns]
    return {
        "ops_per_s": round(statistics.median(s.rate for s in samples), 1),
        "ops_per_s_rounds": [round(s.rate, 1) for s in samples],
        "ops": sum(s.ops for s in samples),
        "p50_ms": _round(percentile_ms(pooled, 50)),
        "p99_ms": _round(percentile_ms(pooled, 99)),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def paired_ratio(a: list[float] | None, b: list[float] | None) -> float | None:
    """Median over rounds of a[r] / b[r]."""
    # Both sides of a pair ran back to back, so load that drifts during the run
    # (other processes on a shared machine) cancels out of each ratio.
    pairs = [x / y for x, y in zip(a or [], b or [], strict=False) if x and y]
    return round(statistics.median(pairs), 2) if pairs else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def conninfo(url: str) -> str:
    """libpq connection string for a SQLAlchemy URL (host may be a socket directory in the query)."""
    u = make_url(url)
    params: dict[str, Any] = {
        "dbname": u.database,
        "user": u.username,
        "password": u.password,
        "host": u.host,
        "port": u.port,
    }
    params.update({key: value for key, value in u.query.items() if isinstance(value, str)})
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v not in (None, "")})


def async_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg_async").render_as_string(hide_password=False)


def child_env(**extra: str) -> dict[str, str]:
    """A clean environment for child processes, as a fresh Lambda or CI job would have."""
    return {"PATH": os.defpath, "LANG": "C.UTF-8"} | extra


def python(
    args: list[str], env: dict[str, str], timeout: float = 300, *, own_maxrss: bool = False, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run this interpreter in a fresh process from cwd (default: the project root)."""
    # Linux carries ru_maxrss across fork+exec, so a child of this (large) process would
    # report our peak as its own: own_maxrss starts it from a small shell that forks first.
    cmd = [sys.executable, *args]
    if own_maxrss:
        cmd = ["/bin/sh", "-c", '"$0" "$@"; exit $?', *cmd]
    return subprocess.run(cmd, cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def machine_info(engine: Engine, origin: str) -> dict[str, Any]:
    """Cores, PostgreSQL version and settings, date, versions: what a reader needs to compare runs."""
    with engine.connect() as conn:
        show = {
            name: conn.exec_driver_sql(f"SHOW {name}").scalar()
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers", "max_wal_size")
        }
    packages = {}
    names = ("sqlalchemy", "psycopg", "fastapi", "mangum", "langgraph-checkpoint-postgres", "openai-agents", "redis")
    for name in names:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgres_version": show.pop("server_version"),
        "postgres_settings": show,
        "postgres_origin": origin,
        "git_commit": _git_commit(),
        "app_uncommitted_changes": _app_dirty(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "packages": packages,
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


def _app_dirty() -> bool | None:
    """True if app/ or migrations/ differ from the commit: the numbers then describe the working tree."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", "app", "migrations"], cwd=ROOT, capture_output=True, text=True
        )
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except OSError:
        return None


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: list[str], raw: list[Any] | None = None) -> str:
        out = []
        for i, v in enumerate(values):
            numeric = raw is not None and isinstance(raw[i], (int, float))
            out.append(v.rjust(widths[i]) if numeric else v.ljust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(c, r) for c, r in zip(cells, rows, strict=True))])


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)

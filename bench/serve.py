"""The real app under `python -m uvicorn --workers N` on a free 127.0.0.1 port, and CPU accounting around it."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy.engine import Engine

from bench.common import NO_RATE_LIMITS
from tests.utils.server import app_env, free_port

START_SECONDS = 60.0
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Uvicorn:
    """A running server: its URL, the parent process, the worker pids it announced, its log file."""

    process: subprocess.Popen
    port: int
    workers: int
    log_path: Path
    worker_pids: list[int]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    @property
    def command(self) -> str:
        return " ".join(["python", *self.process.args[1:]])  # type: ignore[index]


@contextlib.contextmanager
def uvicorn(
    database_url: str,
    workers: int,
    *,
    module: str = "uvicorn",
    app: str = "app.main:create_app",
    path_first: list[str] | None = None,
    **settings: object,
) -> Iterator[Uvicorn]:
    """Start `python -m uvicorn app.main:create_app --factory --workers N`, wait until every worker is up, stop it.

    module: what `python -m` runs with uvicorn's arguments (bench.nodelay for the TCP_NODELAY diagnostic);
    app: the factory to serve; path_first: folders searched before this checkout (another commit's tree).
    """
    env = app_env(database_url, **(NO_RATE_LIMITS | settings))
    if path_first:
        env["PYTHONPATH"] = os.pathsep.join([*path_first, env["PYTHONPATH"]])
    with tempfile.TemporaryDirectory(prefix="bench-uvicorn-") as tmp:
        log_path = Path(tmp) / "server.log"
        port = free_port()
        # uvicorn's own INFO lines (no access log) announce each worker's pid and its startup.
        command = [
            sys.executable,
            "-m",
            module,
            app,
            "--factory",
            "--workers",
            str(workers),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "info",
            "--no-access-log",
        ]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
        server = Uvicorn(process, port, workers, log_path, [])
        try:
            _wait_ready(server)
            yield server
        finally:
            _stop(process)


def _wait_ready(server: Uvicorn) -> None:
    deadline = time.monotonic() + START_SECONDS
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                break
            text = server.log()
            pids = [int(p) for p in re.findall(r"Started server process \[(\d+)\]", text)]
            if server.workers > 1:
                pids = [p for p in pids if p != server.process.pid]  # the supervisor announces itself too
            if text.count("Application startup complete") >= server.workers and len(pids) >= server.workers:
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{server.url}/api/health").status_code == 200:
                        server.worker_pids = pids[: server.workers]
                        return
            time.sleep(0.1)
    raise RuntimeError(f"uvicorn with {server.workers} worker(s) did not come up:\n{server.log()[-4000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(15)


def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process from /proc (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def postmaster_pid(engine: Engine) -> int | None:
    """The pid of the PostgreSQL server's postmaster, if it runs on this machine (the parent of our backend)."""
    with engine.connect() as conn:
        backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        try:
            status = Path(f"/proc/{backend}/status").read_text()
        except OSError:
            return None
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))


def _children(parent: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    pids.append(int(entry))
    return pids


def _machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which is already in user
    return (total - idle) / TICK, total / TICK


class CpuMeter:
    """CPU seconds used over a window by this process (the load generator), the server, PostgreSQL, the rest."""

    def __init__(self, server_pids: list[int], postmaster: int | None):
        self.server_pids = sorted(set(server_pids))  # with one worker the parent is the worker
        self.postmaster = postmaster
        self.pg_pids: list[int] = []

    def _sample(self) -> dict[str, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        busy, total = _machine_busy_seconds()
        return {
            "client": own.ru_utime + own.ru_stime,
            "server": sum(_proc_cpu_seconds(p) for p in self.server_pids),
            "postgres": sum(_proc_cpu_seconds(p) for p in self.pg_pids),
            "busy": busy,
            "total": total,
            "wall": time.perf_counter(),
        }

    def start(self) -> None:
        self.pg_pids = [self.postmaster, *_children(self.postmaster)] if self.postmaster else []
        self.before = self._sample()

    def stop(self, *, exclude_client: float = 0.0) -> dict[str, float | None]:
        """Shares of all cores over the window; exclude_client: CPU seconds of non-load threads in this process."""
        new_pids = [p for p in _children(self.postmaster) if p not in self.pg_pids] if self.postmaster else []
        after = self._sample()
        # A backend that started inside the window counts from zero: its whole CPU time falls in it.
        after["postgres"] += sum(_proc_cpu_seconds(p) for p in new_pids)
        wall = after["wall"] - self.before["wall"]
        cores = os.cpu_count() or 1
        capacity = wall * cores
        used = {k: after[k] - self.before[k] for k in ("client", "server", "postgres", "busy")}
        used["client"] -= exclude_client
        out: dict[str, float | None] = {
            f"{k}_share": round(used[k] / capacity, 3) if capacity else None for k in ("client", "server", "postgres")
        }
        out["machine_busy_share"] = round(used["busy"] / capacity, 3) if capacity else None
        if not self.pg_pids:
            out["postgres_share"] = None  # the server is not a process on this machine
        rest = used["busy"] - used["client"] - used["server"] - used["postgres"]
        out["other_share"] = round(max(rest, 0.0) / capacity, 3) if capacity else None
        out["seconds"] = round(wall, 2)
        return out

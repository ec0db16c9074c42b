"""The real app under uvicorn in a child process, on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 30.0
STOP_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_env(database_url: str, **settings: object) -> dict[str, str]:
    """This environment without any app setting, plus DATABASE_URL and the given settings (upper-cased)."""
    names = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key.upper() not in names}
    env["DATABASE_URL"] = database_url
    env.update({key.upper(): str(value) for key, value in settings.items() if value is not None})
    # The child imports tests.* (agent registries) from the checkout; cwd is an empty folder, so no .env is read.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class Server:
    """A running `uvicorn app.main:create_app --factory`; `log()` is what it printed so far."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: Path):
        self.process, self.port, self.log_path = process, port, log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int | None:
        """SIGTERM (a graceful uvicorn shutdown), then SIGKILL if it hangs; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_SECONDS)
        return self.process.returncode


def _wait_healthy(server: Server, deadline: float) -> bool:
    """True once /api/health answers 200; False if the process exits first or time runs out."""
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{server.url}/api/health").status_code == 200:
                    return True
            time.sleep(0.1)
    return False


@contextlib.contextmanager
def running_app(env: dict[str, str], *, attempts: int = 3, factory: str = "app.main:create_app") -> Iterator[Server]:
    """Start the app (factory: "module:function") with env, wait until /api/health is 200, yield it, stop it."""
    with tempfile.TemporaryDirectory(prefix="uvicorn-") as tmp:
        log_path = Path(tmp) / "server.log"
        server: Server | None = None
        for _ in range(attempts):  # another process may take the free port before uvicorn binds it
            port = free_port()
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                factory,
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ]
            with open(log_path, "ab") as log:
                process = subprocess.Popen(command, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
            server = Server(process, port, log_path)
            if _wait_healthy(server, time.monotonic() + START_SECONDS):
                break
            server.stop()
            server = None
        if server is None:
            raise RuntimeError(f"the app did not become healthy under uvicorn:\n{log_path.read_text()[-4000:]}")
        try:
            yield server
        finally:
            server.stop()


def _wait_answering(server: Server, deadline: float) -> bool:
    """True once /api/health answers at all (any status); False if the process exits first or time runs out."""
    with httpx.Client(timeout=30.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return False
            with contextlib.suppress(httpx.TransportError):
                client.get(f"{server.url}/api/health")
                return True
            time.sleep(0.1)
    return False


@contextlib.contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[Server]:
    """`python -m app serve` as a process manager starts it; yields once it answers HTTP, whatever its health."""
    with tempfile.TemporaryDirectory(prefix="serve-") as tmp:
        log_path = Path(tmp) / "server.log"
        port = free_port()
        command = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
        server = Server(process, port, log_path)
        try:
            if not _wait_answering(server, time.monotonic() + START_SECONDS):
                raise RuntimeError(f"serve did not answer HTTP:\n{server.log()[-4000:]}")
            yield server
        finally:
            server.stop()

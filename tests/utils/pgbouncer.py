"""A real PgBouncer in transaction pooling mode, started on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

BINARY = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as() -> str | None:
    # PgBouncer refuses to run as root: drop to an unprivileged account that exists.
    if os.geteuid() != 0:
        return None
    for name in ("embedded_postgres", "postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    return None


@contextlib.contextmanager
def pgbouncer(server_url: str) -> Iterator[str]:
    """Yield a URL that reaches server_url's server through PgBouncer (transaction pooling)."""
    if BINARY is None:
        raise RuntimeError("pgbouncer is not installed")
    target = make_url(server_url)
    host = target.query.get("host") or target.host or "127.0.0.1"
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="pgbouncer-") as tmp:
        folder = Path(tmp)
        user = _run_as()
        config = folder / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={host} port={target.port or 5432} user={target.username or 'postgres'}"
            + (f" password={target.password}" if target.password else "")
            + "\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            "auth_type = any\npool_mode = transaction\n"
            "max_client_conn = 500\ndefault_pool_size = 20\n"
            "ignore_startup_parameters = extra_float_digits\n"
            "log_connections = 0\nlog_disconnections = 0\n"
            f"logfile = {folder / 'pgbouncer.log'}\npidfile = {folder / 'pgbouncer.pid'}\n"
        )
        if user:
            shutil.chown(folder, user)
            for path in folder.iterdir():
                shutil.chown(path, user)
        command = [BINARY, str(config)] + (["-u", user] if user else [])
        # Its log goes to the logfile; an unread pipe would fill up and stall PgBouncer.
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(port, process, folder / "pgbouncer.log")
            yield target.set(host="127.0.0.1", port=port, query={}).render_as_string(hide_password=False)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_for(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log.read_text(errors="replace") if log.exists() else "no log"
            raise RuntimeError(f"pgbouncer exited: {text[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError("pgbouncer did not start listening")

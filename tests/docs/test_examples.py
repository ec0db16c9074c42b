"""The documentation's runnable shell examples, run against a real server as a reader would type them.

The convention (docs/getting-started.md, "Runnable examples"): a fenced `sh` block directly under the
line `<!-- runnable -->` is run by this test. The runnable blocks of one file run in order in one
bash shell (so a variable set by one is seen by the next), with `set -euo pipefail`, against one
server started as `python -m app serve` starts it (its own database, a free port). A line `#> TEXT`
in a block is output the block must print: the `#>` lines of a file must match lines of its output
in order, `...` standing for any text. Before running, the server's address replaces
`localhost:8000` and `127.0.0.1:8000`, and this interpreter replaces `.venv/bin/python`.

The server has the settings the tours tell the reader to set: `ADMIN_API_KEYS=default:$ADMIN_KEY`
(and `ADMIN_KEY` is exported to the shell, as the README's tour exports it), and the local WhatsApp
settings of docs/channels/whatsapp.md ("Trying it without Meta"), whose sends go nowhere. The shell
has `DATABASE_URL` set to the server's database, so Python examples that read it use that database
(a reader without it gets the embedded PostgreSQL `make run` uses).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.server import app_env, serving

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- runnable -->"
ADMIN_KEY = "docs-example-admin-key-6d1f0b3a9e"
SERVER_SETTINGS = {
    "admin_api_keys": f"default:{ADMIN_KEY}",
    "whatsapp_verify_token": "local-token",
    "whatsapp_app_secret": "local-secret",
    "whatsapp_access_token": "unused",
    # Nothing listens on port 9: a reply's send fails at once, and nothing leaves the machine.
    "whatsapp_api_base_url": "http://127.0.0.1:9",
    "webhook_ack_seconds": 3,
}
RUN_SECONDS = 120  # a bound on one file's examples, never a measure of speed


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def runnable_blocks(text: str) -> list[str]:
    """The bodies of the fenced blocks directly under a MARKER line, in order.

    Raises ValueError for a marker not followed by a `sh` fence (a marker that would silently test nothing).
    """
    lines = text.splitlines()
    blocks = []
    for number, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        if number + 1 >= len(lines) or lines[number + 1].strip() != "```sh":
            raise ValueError(f"line {number + 1}: {MARKER} must be followed by a ```sh fence")
        end = next(i for i in range(number + 2, len(lines)) if lines[i].strip() == "```")
        blocks.append("\n".join(lines[number + 2 : end]))
    return blocks


def expected_lines(script: str) -> list[re.Pattern[str]]:
    """The `#> ` lines of a script as patterns over one output line (`...`: any text)."""
    patterns = []
    for line in script.splitlines():
        if line.lstrip().startswith("#>"):
            shown = line.lstrip()[2:].strip()
            patterns.append(re.compile(".*".join(re.escape(part) for part in shown.split("...")) + r"\s*"))
    return patterns


def unmatched(patterns: list[re.Pattern[str]], output: str) -> list[str]:
    """The patterns that do not match output's lines in order (each after the previous one's line)."""
    lines = output.splitlines()
    position, missing = 0, []
    for pattern in patterns:
        found = next((i for i in range(position, len(lines)) if pattern.fullmatch(lines[i])), None)
        if found is None:
            missing.append(pattern.pattern)
        else:
            position = found + 1
    return missing


def test_the_convention_finds_the_readme_tour():
    blocks = runnable_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README's tour is marked runnable"
    assert any("/api/chat" in block for block in blocks) and any("ADMIN_KEY" in block for block in blocks)
    assert unmatched(expected_lines('#> {"a":...,"b":2}'), 'noise\n{"a":1,"b":2}') == []
    assert unmatched(expected_lines("#> two\n#> one"), "one\ntwo") == ["one\\s*"]


@pytest.fixture(scope="module")
def server_address(database_url: str) -> Iterator[str]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: the examples are curl commands")
    with serving(app_env(database_url, **SERVER_SETTINGS)) as server:
        yield f"127.0.0.1:{server.port}"


@pytest.mark.parametrize(
    "document",
    [path for path in documents() if runnable_blocks(path.read_text())],
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_runnable_examples(document: Path, server_address: str, database_url: str, engine, tmp_path: Path):
    script = "\n".join(runnable_blocks(document.read_text()))
    for written in ("localhost:8000", "127.0.0.1:8000"):
        script = script.replace(written, server_address)
    script = script.replace(".venv/bin/python", sys.executable)
    env = {
        **app_env(database_url),  # no other app setting of this process leaks into the examples
        "ADMIN_KEY": ADMIN_KEY,
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
    }
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    missing = unmatched(expected_lines(script), done.stdout)
    assert missing == [], f"not in the output, in order: {missing}\n--- output:\n{done.stdout[-4000:]}"

"""Section 7: slow turns: N concurrent turns of an agent that waits on the network, on one server process.

Each turn's agent waits AGENT_SECONDS (as an LLM call does): `await anyio.sleep` for the
async agent, `time.sleep` for the sync one (which the pipeline runs on a worker thread
under AGENT_THREADS). N clients, one device each, send one message at the same moment;
meanwhile /api/health is asked every 50 ms, from a process of its own (bench/health.py).
Reported: wall time until the last answer, turns held at once (N x AGENT_SECONDS / wall time,
by Little's law), /api/health p50/p99 while the turns ran, and the server's peak RSS. The
commit before the async runtime (BEFORE) runs the same sync agent in the same run, side by side (full mode only: it
takes about a minute for 1,000 turns).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import BEFORE, Bench, checkout, table
from bench.health import probing
from bench.serve import uvicorn

AGENTS_MODULE = "bench_slow_agents"
# Written to a folder of its own, so the commit before this work imports it as well.
AGENTS_SOURCE = """
import os
import time

import anyio

from app.agents import AgentReply

SECONDS = float(os.environ.get("BENCH_AGENT_SECONDS", "2"))


class AsyncSlow:
    async def handle(self, message):
        await anyio.sleep(SECONDS)
        return AgentReply("done")


class SyncSlow:
    def handle(self, message):
        time.sleep(SECONDS)
        return AgentReply("done")


async_registry = {"manager": AsyncSlow()}
sync_registry = {"manager": SyncSlow()}
"""


def run(b: Bench) -> dict[str, Any]:
    turns, seconds = b.pick(1000, 100), b.pick(2.0, 0.5)
    results: dict[str, Any] = {"turns": turns, "agent_seconds": seconds}
    with _agents_dir() as agents_dir:
        variants: list[tuple[str, str, list[str]]] = [
            ("async agent", "async_registry", [agents_dir]),
            ("sync agent", "sync_registry", [agents_dir]),
        ]
        with contextlib.ExitStack() as stack:
            if not b.quick:
                before = stack.enter_context(checkout(BEFORE))
                variants.append((f"sync agent @ {BEFORE}", "sync_registry", [str(before), agents_dir]))
            for label, registry, path in variants:
                results[label] = _measure(b, turns, seconds, f"{AGENTS_MODULE}:{registry}", path)
    rows = [
        [
            label,
            r["wall_s"],
            r["held_at_once"],
            r["ok"],
            r["other"],
            r["health_p50_ms"],
            r["health_p99_ms"],
            r["peak_rss_mib"],
        ]
        for label, r in results.items()
        if isinstance(r, dict)
    ]
    print(f"{turns} concurrent turns, each waiting {seconds:g} s, on one uvicorn process")
    print(table(["agent", "wall s", "held at once", "200", "other", "health p50 ms", "health p99 ms", "RSS MiB"], rows))
    return results


@contextlib.contextmanager
def _agents_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-agents-") as tmp:
        (Path(tmp) / f"{AGENTS_MODULE}.py").write_text(AGENTS_SOURCE)
        yield tmp


def _measure(b: Bench, turns: int, seconds: float, agents: str, path: list[str]) -> dict[str, Any]:
    settings = {
        "agents": agents,
        "agent_timeout_seconds": 120,
        "chat_wait_seconds": 120,
        "max_concurrent_turns": turns,
        "db_pool_size": 10,
        "lease_seconds": 30,
    }
    with uvicorn(b.url, 1, path_first=path, bench_agent_seconds=seconds, **settings) as server:
        out = asyncio.run(_load(server.url, turns))
        out["peak_rss_mib"] = _peak_rss_mib(server.process.pid)
    out["held_at_once"] = round(turns * seconds / out["wall_s"]) if out["wall_s"] else None
    return out


async def _load(url: str, turns: int) -> dict[str, Any]:
    # aiohttp: a thousand requests in flight cost the load generator about a third of what httpx
    # did (7 s of CPU for 1,000 turns, more than the server's 2 s), on the cores the server shares.
    connector = aiohttp.TCPConnector(limit=turns + 10)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as client:

        async def turn() -> int:
            headers = {"X-Device-ID": str(uuid.uuid4())}
            async with client.post("/api/chat", json={"message": "hi"}, headers=headers) as response:
                await response.read()
                return response.status

        with probing(url) as health:
            started = time.perf_counter()
            statuses = await asyncio.gather(*(turn() for _ in range(turns)))
            wall = time.perf_counter() - started
    return {"wall_s": round(wall, 2), "ok": statuses.count(200), "other": len(statuses) - statuses.count(200), **health}


def _peak_rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return round(kib / 1024, 1) if kib is not None else None

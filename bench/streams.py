"""Section "streams": streamed replies through POST /api/chat/stream (the AI SDK's UI message stream).

- first delta: one stream at a time on a real uvicorn process; the agent's first delta is its
  wall clock (bench/stream_agents.py), so the client, on the same machine, measures how long
  after the agent's own first delta the first text-delta part reached it (p50, p99), and how
  long after the request the agent started (the claim before it).
- statements per streamed reply: app.pipeline.Pipeline in this process on the production
  engine, the statements counted at psycopg's cursor (tests/utils/counting.py); the bound is
  claim + finish + one per STREAM_FLUSH_MS interval of writing.
- concurrent streams: N clients (one device each) stream at once on one uvicorn process, each
  reply 10 words over AGENT_SECONDS; /api/health asked every 50 ms meanwhile (bench/health.py). Wall time until the
  last [DONE], /api/health p50/p99, the server's peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx

from app.agents import load_registry
from app.core.engine import lock_pools
from app.pipeline import Inbound, Pipeline
from bench.common import Bench, table
from bench.health import probing
from bench.serve import uvicorn
from bench.slowturns import _peak_rss_mib
from tests.utils import aio
from tests.utils.counting import count_statements, work

AGENTS = "bench.stream_agents:registry"
WORDS = 10


def run(b: Bench) -> dict[str, Any]:
    streams, seconds = b.pick(1000, 50), b.pick(2.0, 0.5)
    results: dict[str, Any] = {}
    results["statements"] = _statements(b, b.pick(20, 5), b.pick(1.0, 0.3))
    settings = {
        "agents": AGENTS,
        "agent_timeout_seconds": 120,
        "chat_wait_seconds": 120,
        "max_concurrent_turns": streams + 10,
        "db_pool_size": 10,
        "lease_seconds": 30,
    }
    with uvicorn(b.url, 1, **settings) as server:
        with uvicorn(b.url, 1, **settings) as other:  # a second instance, for a stop sent to it
            results["stop"] = asyncio.run(_stop_across(server.url, other.url, b.pick(20, 3)))
        results["first_delta"] = asyncio.run(_first_delta(server.url, b.pick(300, 30)))
        concurrent = asyncio.run(_concurrent(server.url, streams, seconds))
        concurrent["peak_rss_mib"] = _peak_rss_mib(server.process.pid)
        results["concurrent"] = concurrent
    first, st, conc = results["first_delta"], results["statements"], results["concurrent"]
    print(f"first delta, {first['streams']} streams one at a time on one uvicorn process")
    print(
        table(
            ["measure", "p50 ms", "p99 ms"],
            [
                ["client's first delta after the agent's", first["after_agent_p50_ms"], first["after_agent_p99_ms"]],
                ["agent's first delta after the request", first["agent_start_p50_ms"], first["agent_start_p99_ms"]],
                ["client's first delta after the request", first["ttfd_p50_ms"], first["ttfd_p99_ms"]],
            ],
        )
    )
    print(
        f"\nstatements per streamed reply ({st['replies']} replies, {st['writing_s']:g} s of writing each, "
        f"STREAM_FLUSH_MS={st['flush_ms']})"
    )
    print(
        table(
            ["mean", "max", "draft writes max", "bound", "over bound"],
            [[st["per_reply_mean"], st["per_reply_max"], st["draft_max"], st["bound"], st["over_bound"]]],
        )
    )
    stop = results["stop"]
    print(
        f"\nstop from another instance ({stop['samples']} streams, {stop['failed']} failed): from sending "
        f"POST /api/chat/stop to the second instance until the first's stream says stopped: "
        f"p50 {stop['p50_ms']} ms, max {stop['max_ms']} ms"
    )
    print(f"\n{streams} concurrent streams of {WORDS} words over {seconds:g} s on one uvicorn process")
    print(
        table(
            ["wall s", "complete", "other", "health p50 ms", "health p99 ms", "RSS MiB"],
            [
                [
                    conc["wall_s"],
                    conc["complete"],
                    conc["other"],
                    conc["health_p50_ms"],
                    conc["health_p99_ms"],
                    conc["peak_rss_mib"],
                ]
            ],
        )
    )
    results |= {"streams": streams, "agent_seconds": seconds}
    return results


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2)


def _body(text: str) -> dict[str, Any]:
    message = {"id": uuid.uuid4().hex, "role": "user", "parts": [{"type": "text", "text": text}]}
    return {"id": "bench", "trigger": "submit-message", "messages": [message]}


async def _parts(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The UI message stream's parts as they arrive; the closing `[DONE]` as {"type": "[DONE]"}."""
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            yield {"type": "[DONE]"} if payload == "[DONE]" else json.loads(payload)


async def _stream(client: httpx.AsyncClient, text: str) -> tuple[list[dict[str, Any]], float | None]:
    """One streamed reply from a new device: its parts, and time.time() when its first text-delta came."""
    parts: list[dict[str, Any]] = []
    first: float | None = None
    headers = {"X-Device-ID": str(uuid.uuid4())}
    async with client.stream("POST", "/api/chat/stream", json=_body(text), headers=headers) as response:
        if response.status_code != 200:
            return [{"type": "http", "status": response.status_code}], None
        async for part in _parts(response):
            if part["type"] == "text-delta" and first is None:
                first = time.time()
            parts.append(part)
    return parts, first


async def _stop_across(url: str, other: str, samples: int) -> dict[str, Any]:
    """Streams on `url` stopped through `other`: ms from sending the stop until the stream's `stopped` status.

    The stop reaches the producing instance by NOTIFY (app/streams/signals.py); the agent
    writes a word every 20 ms for 20 s, so every stream is still writing when stopped.
    """
    took: list[float] = []
    failed = 0
    async with (
        httpx.AsyncClient(base_url=url, timeout=60) as client,
        httpx.AsyncClient(base_url=other, timeout=60) as stopper,
    ):
        for index in range(samples):
            headers = {"X-Device-ID": str(uuid.uuid4())}
            sent: float | None = None
            async with client.stream("POST", "/api/chat/stream", json=_body("1000 20"), headers=headers) as response:
                async for part in _parts(response):
                    if part["type"] == "text-delta" and sent is None:
                        sent = time.perf_counter()
                        answer = await stopper.post("/api/chat/stop", headers=headers)
                        if answer.json().get("status") != "stopping":
                            break
                    elif part["type"] == "data-status" and part["data"].get("status") == "stopped" and sent:
                        took.append((time.perf_counter() - sent) * 1000)
                        break
            if len(took) <= index:  # no stopped status after the stop (or the stop was refused)
                failed += 1
    return {
        "samples": samples,
        "failed": failed,
        "p50_ms": _pct(took, 0.5),
        "max_ms": round(max(took), 2) if took else None,
    }


def _complete(parts: list[dict[str, Any]], words: int) -> bool:
    text = "".join(part["delta"] for part in parts if part["type"] == "text-delta")
    return bool(parts) and parts[-1]["type"] == "[DONE]" and text.split()[1:] == [f"w{i}" for i in range(words)]


async def _first_delta(url: str, streams: int) -> dict[str, Any]:
    after_agent, agent_start, ttfd, failed = [], [], [], 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await _stream(client, "0 0")  # warm-up: connections, prepared statements
        for _ in range(streams):
            sent = time.time()
            parts, first = await _stream(client, "3 5")
            if first is None or not _complete(parts, 3):
                failed += 1
                continue
            stamp = float(next(part["delta"] for part in parts if part["type"] == "text-delta").split()[0])
            after_agent.append((first - stamp) * 1000)
            agent_start.append((stamp - sent) * 1000)
            ttfd.append((first - sent) * 1000)
    return {
        "streams": streams,
        "failed": failed,
        "after_agent_p50_ms": _pct(after_agent, 0.5),
        "after_agent_p99_ms": _pct(after_agent, 0.99),
        "agent_start_p50_ms": _pct(agent_start, 0.5),
        "agent_start_p99_ms": _pct(agent_start, 0.99),
        "ttfd_p50_ms": _pct(ttfd, 0.5),
        "ttfd_p99_ms": _pct(ttfd, 0.99),
    }


def _statements(b: Bench, replies: int, writing_s: float) -> dict[str, Any]:
    """Statements of streamed web turns in this process (no reader: the request's own stream reads none)."""
    settings = b.settings(agents=AGENTS)
    engine = b.engine()
    pipeline = Pipeline(engine, load_registry(settings.agents), settings)
    ms = writing_s * 1000 / WORDS
    text = f"{WORDS} {ms:g}"
    aio.run(pipeline.handle, Inbound("default", f"bench-stream-warm-{uuid.uuid4()}", "0 0", None, {"channel": "web"}))
    per_reply, drafts = [], []
    elapsed: list[float] = []
    try:
        for _ in range(replies):
            device = f"bench-stream-{uuid.uuid4()}"
            with count_statements(engine) as statements:
                started = time.perf_counter()
                result = aio.run(pipeline.handle, Inbound("default", device, text, None, {"channel": "web"}))
                elapsed.append(time.perf_counter() - started)
            if result.status != "answered":
                raise RuntimeError(f"a streamed turn ended {result.status}")
            ours = work(statements)
            per_reply.append(len(ours))
            drafts.append(sum("conversation_drafts" in s and "DELETE" not in s for s in ours))
    finally:
        aio.run(lock_pools(engine).aclose)  # the async pool lives on aio's loop: closed there, not left pending
        engine.dispose()
    flush_s = settings.stream_flush_ms / 1000
    bounds = [2 + math.ceil(seconds / flush_s) for seconds in elapsed]
    return {
        "replies": replies,
        "writing_s": writing_s,
        "flush_ms": settings.stream_flush_ms,
        "per_reply_mean": round(sum(per_reply) / len(per_reply), 2),
        "per_reply_max": max(per_reply),
        "draft_max": max(drafts),
        "bound": max(bounds),
        "over_bound": sum(count > bound for count, bound in zip(per_reply, bounds, strict=True)),
        "histogram": {str(k): v for k, v in sorted(Counter(per_reply).items())},
    }


async def _concurrent(url: str, streams: int, seconds: float) -> dict[str, Any]:
    # aiohttp and a health probe of its own (bench/health.py): with httpx, the load generator's own
    # CPU (more than the server's, slowturns measured) was most of what the probe waited for.
    text = f"{WORDS} {seconds * 1000 / WORDS:g}"
    connector = aiohttp.TCPConnector(limit=streams + 10)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as client:

        async def one() -> bool:
            parts: list[dict[str, Any]] = []
            headers = {"X-Device-ID": str(uuid.uuid4())}
            async with client.post("/api/chat/stream", json=_body(text), headers=headers) as response:
                if response.status != 200:
                    return False
                async for raw in response.content:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("data: "):
                        payload = line[len("data: ") :]
                        parts.append({"type": "[DONE]"} if payload == "[DONE]" else json.loads(payload))
            return _complete(parts, WORDS)

        with probing(url) as health:
            started = time.perf_counter()
            complete = await asyncio.gather(*(one() for _ in range(streams)))
            wall = time.perf_counter() - started
    return {"wall_s": round(wall, 2), "complete": sum(complete), "other": streams - sum(complete), **health}

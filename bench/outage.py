"""Section outage: how long a chat request takes to be answered degraded while the database is down.

The server (uvicorn, one worker) reaches PostgreSQL through a loopback proxy
(tests/utils/proxy.py). It has answered health checks only, as a new instance behind a load
balancer has, when the proxy cuts every connection and refuses new ones. Then REQUESTS
POST /api/chat, one after the other, each timed from the client until its answer (200,
degraded), and once the proxy serves again, the time until the first answer that is not
degraded. Full mode runs the same against BEFORE_FIX, the commit before the health check's
idle connection stopped counting as one a statement could reuse (each request waited
DB_POOL_TIMEOUT then).
"""

from __future__ import annotations

import statistics
import time
import uuid
from contextlib import ExitStack
from typing import Any

import httpx

from bench.common import Bench, checkout, table
from bench.serve import uvicorn
from tests.utils.proxy import outage_proxy

BEFORE_FIX = "61031d9"
POOL_TIMEOUT = 5.0  # DB_POOL_TIMEOUT, the default: what a request could wait for a pooled connection
RECOVERY_SECONDS = 30.0


def _chat(client: httpx.Client, url: str, device: str, text: str) -> tuple[float, bool]:
    started = time.perf_counter()
    response = client.post(f"{url}/api/chat", json={"message": text}, headers={"X-Device-ID": device})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed * 1000, bool(response.json()["degraded"])


def _measure(b: Bench, requests: int, path_first: list[str] | None) -> dict[str, Any]:
    device = str(uuid.uuid4())
    with ExitStack() as stack:
        proxy = stack.enter_context(outage_proxy(b.url))
        server = stack.enter_context(
            uvicorn(proxy.url, 1, path_first=path_first, db_pool_timeout=POOL_TIMEOUT, db_connect_timeout=2)
        )
        client = stack.enter_context(httpx.Client(timeout=60))
        assert client.get(f"{server.url}/api/health").status_code == 200  # the check keeps its connection
        proxy.down()
        answers = [_chat(client, server.url, device, "hi") for _ in range(requests)]
        if not all(degraded for _, degraded in answers):
            raise RuntimeError("a request during the outage was not answered degraded")
        proxy.up()
        started, recovered = time.perf_counter(), None
        while time.perf_counter() - started < RECOVERY_SECONDS:
            _, degraded = _chat(client, server.url, device, "hi")
            if not degraded:
                recovered = round((time.perf_counter() - started) * 1000, 1)
                break
    ms = [round(elapsed, 1) for elapsed, _ in answers]
    later = ms[1:] or ms
    return {
        "ms": ms,
        "first_ms": ms[0],
        "later_median_ms": round(statistics.median(later), 1),
        "recovered_ms": recovered,
    }


def run(b: Bench) -> dict[str, Any]:
    """Per request during the outage, ms until the degraded answer; see the module doc."""
    requests = b.pick(6, 3)
    out: dict[str, Any] = {"requests": requests, "db_pool_timeout_s": POOL_TIMEOUT, "runs": {}}
    out["runs"]["now"] = _measure(b, requests, None)
    if not b.quick:
        with checkout(BEFORE_FIX) as before:
            out["runs"][BEFORE_FIX] = _measure(b, requests, [str(before)])
    rows = [
        [name, r["first_ms"], r["later_median_ms"], max(r["ms"]), r["recovered_ms"]] for name, r in out["runs"].items()
    ]
    print(f"outage: {requests} chat requests one after the other while the database is down, DB_POOL_TIMEOUT 5 s")
    print(table(["server", "first ms", "later median ms", "max ms", "first normal answer after, ms"], rows))
    return out

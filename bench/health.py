"""`python -m bench.health URL`: ask URL/api/health every 50 ms until stdin closes; print the latencies (JSON).

A process of its own, so that a load generator busy on its own event loop (a thousand
requests in flight) does not add its delays to what /api/health is measured to take.
`probing(url)` runs it around a block of load and hands back p50/p99 afterwards.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

INTERVAL_SECONDS = 0.05


def main(url: str) -> None:
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=300) as client:
        print("ready", flush=True)
        while not stop.is_set():
            started = time.perf_counter()
            client.get("/api/health")
            latencies.append((time.perf_counter() - started) * 1000)
            stop.wait(INTERVAL_SECONDS)
    print(json.dumps(latencies), flush=True)


def summary(latencies: list[float]) -> dict[str, Any]:
    """Count, p50 and p99 (ms) of the probe's latencies."""
    ordered = sorted(latencies)
    pick = (lambda q: round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1)) if ordered else (lambda q: None)
    return {"health_requests": len(ordered), "health_p50_ms": pick(0.5), "health_p99_ms": pick(0.99)}


@contextlib.contextmanager
def probing(url: str) -> Iterator[dict[str, Any]]:
    """Probe /api/health while the block runs; the yielded dict gets summary()'s keys at exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.health", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdin is not None and process.stdout is not None
    result: dict[str, Any] = {}
    try:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the health probe did not start")
        yield result
    finally:
        process.stdin.close()
        out = process.stdout.read()
        process.wait(30)
    result.update(summary(json.loads(out)))


if __name__ == "__main__":
    main(sys.argv[1])

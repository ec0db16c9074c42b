"""A closed-loop load of scheduling conversations on POST /api/chat: N client threads, keep-alive httpx clients."""

# Each client thread owns a disjoint set of devices and walks them one conversation
# at a time ("book an appointment" -> "monday" -> "10am" -> "yes"), so a device's
# messages arrive in order and never wait on another client's lease: the lock is
# taken by the first message, kept by the next two and released by the last.

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.common import percentile_ms

SCRIPT = ("book an appointment", "monday", "10am", "yes")
# The lock each reply should report, message by message.
EXPECTED_LOCK = ("scheduling", "scheduling", "scheduling", None)
BODIES = [json.dumps({"message": text}).encode() for text in SCRIPT]
NAMESPACE = uuid.UUID("7c0e1f52-6a1b-4b8e-9a43-2b1d8f0c5e10")


def web_devices(count: int, label: str) -> list[str]:
    """Deterministic web-chat device ids (UUIDs, as X-Device-ID wants them)."""
    return [str(uuid.uuid5(NAMESPACE, f"{label}/{n}")) for n in range(count)]


@dataclass
class Record:
    started: float  # time.perf_counter() around the request
    ended: float
    status: int | None  # None: no response (timeout, connection error)
    degraded: bool = False
    unexpected: bool = False  # 200, but not the agent/lock the conversation implies


@dataclass
class ChatLoad:
    """Runs until stop() is called; every request ends as a Record."""

    url: str
    devices: list[str]
    clients: int
    timeout: float = 30.0
    records: list[Record] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._client, args=(self.devices[c :: self.clients],), daemon=True, name=f"chat-client-{c}"
            )
            for c in range(self.clients)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def _client(self, mine: list[str]) -> None:
        headers = {"content-type": "application/json"}
        clock = time.perf_counter
        with httpx.Client(base_url=self.url, timeout=self.timeout) as client:
            while not self._stop.is_set():
                for device in mine:
                    headers["x-device-id"] = device
                    for step, body in enumerate(BODIES):
                        if self._stop.is_set():
                            return
                        started = clock()
                        try:
                            response = client.post("/api/chat", content=body, headers=headers)
                        except httpx.HTTPError as err:
                            self.records.append(Record(started, clock(), None))
                            self.errors.append(f"{type(err).__name__}: {err}")
                            continue
                        ended = clock()
                        record = Record(started, ended, response.status_code)
                        if response.status_code == 200:
                            reply = response.json()
                            record.degraded = bool(reply.get("degraded"))
                            record.unexpected = (reply.get("agent"), reply["lock"]["agent"]) != (
                                "scheduling",
                                EXPECTED_LOCK[step],
                            )
                        elif len(self.errors) < 20:
                            self.errors.append(f"{response.status_code}: {response.text[:200]}")
                        self.records.append(record)


def window_stats(records: list[Record], intervals: list[tuple[float, float]]) -> dict[str, Any]:
    """Messages completed inside the intervals: rate, latency percentiles, failures, slowest and fastest second."""
    inside: list[Record] = []
    per_second: list[int] = []
    for start, end in intervals:
        mine = [r for r in records if start <= r.ended <= end]
        inside += mine
        buckets = [0] * int(end - start)  # whole seconds only: a partial last second would read low
        for r in mine:
            slot = int(r.ended - start)
            if slot < len(buckets):
                buckets[slot] += 1
        per_second += buckets
    seconds = sum(end - start for start, end in intervals)
    latencies = [round((r.ended - r.started) * 1e9) for r in inside]
    return {
        "seconds": round(seconds, 2),
        "messages": len(inside),
        "messages_per_s": round(len(inside) / seconds, 1) if seconds else None,
        "p50_ms": _r(percentile_ms(latencies, 50)),
        "p99_ms": _r(percentile_ms(latencies, 99)),
        "max_ms": _r(max(latencies) / 1e6 if latencies else None),
        "non_200": sum(1 for r in inside if r.status != 200),
        "degraded": sum(1 for r in inside if r.degraded),
        "unexpected_replies": sum(1 for r in inside if r.unexpected),
        "per_second_min": min(per_second) if len(per_second) > 1 else None,
        "per_second_max": max(per_second) if len(per_second) > 1 else None,
    }


def totals(records: list[Record]) -> dict[str, int]:
    """Every request of a run, warm-up included: none may fail."""
    return {
        "requests": len(records),
        "non_200": sum(1 for r in records if r.status != 200),
        "degraded": sum(1 for r in records if r.degraded),
        "unexpected_replies": sum(1 for r in records if r.unexpected),
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)

"""A bounded concurrent HTTP client: a fixed number of threads, a timeout per request, a deadline overall.

`sequences` runs each script in its own thread, one request after the other (so a
script's order is the order the server sees). `bursts` sends each round's requests
at the same moment from as many threads, then the next round. Nothing raises on a
failed request: every call ends as an Outcome, with a status or an error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

MAX_THREADS = 64


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    tag: Any = None  # whatever the test needs to recognise the call afterwards


@dataclass(frozen=True)
class Outcome:
    call: Call
    status: int | None  # None: no response (connection refused, timeout, deadline passed)
    body: Any = None  # parsed JSON, else the text
    error: str | None = None
    started: float = 0.0  # time.monotonic() around the call, to relate calls to other events
    ended: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200


def send(client: httpx.Client, call: Call, deadline: float) -> Outcome:
    """One request, or an Outcome without status if the deadline has passed or the request failed."""
    started = time.monotonic()
    if started >= deadline:
        return Outcome(call, None, error="deadline passed before the request", started=started, ended=started)
    try:
        response = client.request(call.method, call.path, headers=call.headers, json=call.json, content=call.content)
    except httpx.HTTPError as err:
        return Outcome(call, None, error=f"{type(err).__name__}: {err}", started=started, ended=time.monotonic())
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return Outcome(call, response.status_code, body, started=started, ended=time.monotonic())


class Load:
    """Clients of one base URL; every loop is bounded by the number of calls and by the deadline."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, deadline_seconds: float = 120.0):
        self.base_url = base_url
        self.timeout = timeout
        self.deadline = time.monotonic() + deadline_seconds

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=self.timeout)

    def sequences(
        self,
        scripts: Sequence[Sequence[Call]],
        *,
        on_outcome: Callable[[Outcome], None] | None = None,
        stop: threading.Event | None = None,
        pause: float = 0.0,
    ) -> list[list[Outcome]]:
        """Run each script in its own thread, its calls one after the other; outcomes in script order.

        Once stop is set, no script starts another call (the scripts bound the work; stop may end it sooner).
        pause: seconds each client waits between its calls, to pace traffic whose answers come instantly.
        """
        results: list[list[Outcome]] = [[] for _ in scripts]

        def run(index: int) -> None:
            with self.client() as client:
                for call in scripts[index]:
                    if stop is not None and stop.is_set():
                        return
                    outcome = send(client, call, self.deadline)
                    results[index].append(outcome)
                    if on_outcome is not None:
                        on_outcome(outcome)
                    if pause:
                        time.sleep(pause)

        self._threads([lambda i=i: run(i) for i in range(len(scripts))])
        return results

    def bursts(self, rounds: Sequence[Sequence[Call]]) -> list[list[Outcome]]:
        """Send each round's calls at once (one thread per slot, released by a barrier), round after round."""
        width = max((len(r) for r in rounds), default=0)
        if width == 0:
            return [[] for _ in rounds]
        results: list[list[Outcome | None]] = [[None] * len(r) for r in rounds]
        barrier = threading.Barrier(width)

        def run(slot: int) -> None:
            with self.client() as client:
                for number, calls in enumerate(rounds):
                    remaining = self.deadline - time.monotonic()
                    try:
                        barrier.wait(timeout=max(remaining, 0.001))
                    except threading.BrokenBarrierError:
                        pass  # a slot gave up (deadline): the others still send, just not together
                    if slot < len(calls):
                        results[number][slot] = send(client, calls[slot], self.deadline)

        self._threads([lambda s=s: run(s) for s in range(width)])
        return [[outcome for outcome in r if outcome is not None] for r in results]

    def _threads(self, targets: list[Callable[[], None]]) -> None:
        if len(targets) > MAX_THREADS:
            raise ValueError(f"at most {MAX_THREADS} concurrent clients")
        threads = [threading.Thread(target=target, daemon=True) for target in targets]
        for thread in threads:
            thread.start()
        for thread in threads:
            # Each call is bounded by the timeout and no call starts after the deadline.
            thread.join(max(self.deadline - time.monotonic(), 0) + self.timeout + 5)


def together(*targets: Callable[[], Any], timeout: float = 300.0) -> list[Any]:
    """Run callables in parallel threads and return their results (re-raising the first exception)."""
    results: list[Any] = [None] * len(targets)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = targets[index]()
        except BaseException as err:  # noqa: BLE001 - handed to the caller below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(targets))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError(f"parallel work still running after {timeout}s")
    if errors:
        raise errors[0]
    return results

"""Send many devices' chat messages at once from one event loop, and act while they are in flight."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx

CLIENT_SECONDS = 60.0  # a bound on the test, never a measure of speed


class Responses(dict):
    """Responses by device, and a way to await how many have come."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = anyio.Condition()

    async def add(self, device: str, response: httpx.Response) -> None:
        async with self.changed:
            self[device] = response
            self.changed.notify_all()

    async def wait_count(self, count: int) -> None:
        """Return once count responses have come; TimeoutError after CLIENT_SECONDS."""
        with anyio.fail_after(CLIENT_SECONDS):
            async with self.changed:
                while len(self) < count:
                    await self.changed.wait()


During = Callable[[httpx.AsyncClient, Responses], Awaitable[Any]]


async def _nothing(client: httpx.AsyncClient, responses: Responses) -> None:
    return None


async def post_all(url: str, messages: dict[str, str], during: During = _nothing) -> tuple[Responses, Any]:
    """POST /api/chat for each device's message at once (one connection each); `during(client, responses)`
    runs meanwhile. Returns the responses by device and what `during` returned. Run it with tests.utils.aio.run."""
    responses = Responses()
    limits = httpx.Limits(max_connections=len(messages) + 10, max_keepalive_connections=len(messages) + 10)
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_SECONDS, limits=limits) as client:

        async def post(device: str, text: str) -> None:
            response = await client.post("/api/chat", json={"message": text}, headers={"X-Device-ID": device})
            await responses.add(device, response)

        async with anyio.create_task_group() as group:
            for device, text in messages.items():
                group.start_soon(post, device, text)
            seen = await during(client, responses)
    return responses, seen

"""The streaming agent of `make bench`'s "streams" section (AGENTS=bench.stream_agents:registry).

A message "<n> <ms>" is answered with n + 1 deltas: first the agent's wall clock
(time.time(), seconds) as text, sent as soon as the agent starts, so that a client on
the same machine can tell how long after the agent's own first delta its first delta
arrived; then n words "w<i> ", one every <ms> milliseconds (a model writing).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio

from app.agents import AgentInput, AgentReply, StreamItem


class Timed:
    async def handle(self, message: AgentInput) -> AgentReply:
        final = None
        async for item in self.stream(message):
            final = item
        assert isinstance(final, AgentReply)
        return final

    async def stream(self, message: AgentInput) -> AsyncIterator[StreamItem]:
        count, ms = (message.text.split() + ["0", "0"])[:2]
        text = f"{time.time():.6f} "
        yield text
        for index in range(int(count)):
            await anyio.sleep(float(ms) / 1000)  # the model's pace
            yield f"w{index} "
            text += f"w{index} "
        yield AgentReply(text)


registry = {"manager": Timed()}

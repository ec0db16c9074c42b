"""Streaming agents for stream tests, usable in child processes (AGENTS=tests.utils.stream_agents:registry).

- "hold <gate> <w1> <w2> ...": sends "<w1> " at once, then (first attempt only) waits until
  the test opens <gate> (tests/utils/gates.py, at GATE_URL), then the other words. A rerun
  (attempt 2) answers "again <w1> <w2> ..." without waiting. The reply hands the lock to
  "helper" (answered), so the stream's data-lock names it.
- "drip <n> <ms>": n deltas "d<i> ", one every <ms> (a model writing), without a lock change.
- "tool <w>": a tool call and its result, then "<w>".
- anything else: the text echoed as one delta.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import anyio
import httpx

from app.agents import AgentInput, AgentReply, Handoff, Keep, StreamEvent, StreamItem


async def gate(name: str) -> None:
    async with httpx.AsyncClient(timeout=90.0) as client:
        response = await client.get(f"{os.environ['GATE_URL']}/wait/{name}")
        response.raise_for_status()


class Streamer:
    def __init__(self, name: str):
        self.name = name

    async def handle(self, message: AgentInput) -> AgentReply:
        final = None
        async for item in self.stream(message):
            final = item
        assert isinstance(final, AgentReply)
        return final

    async def stream(self, message: AgentInput) -> AsyncIterator[StreamItem]:
        words = message.text.split()
        if words[:1] == ["hold"] and len(words) >= 3:
            name, rest = words[1], words[2:]
            if message.attempt > 1:
                rest = ["again", *rest]
            yield rest[0] + " "
            if message.attempt == 1:
                await gate(name)
            for index, word in enumerate(rest[1:], start=1):
                yield word + (" " if index < len(rest) - 1 else "")
            yield AgentReply(" ".join(rest), lock=Handoff("helper", answered=True))
        elif words[:1] == ["drip"]:
            count, ms = int(words[1]), float(words[2])
            for index in range(count):
                yield f"d{index} "
                await anyio.sleep(ms / 1000)  # the model's pace, not a synchronisation
            yield AgentReply("".join(f"d{index} " for index in range(count)), lock=Keep())
        elif words[:1] == ["tool"]:
            yield StreamEvent("tool-call", "call-1", name="lookup", input={"q": words[1]})
            yield StreamEvent("tool-result", "call-1", output={"found": words[1]})
            yield words[1]
            yield AgentReply(words[1])
        else:
            yield message.text
            yield AgentReply(message.text)


registry = {"manager": Streamer("manager"), "helper": Streamer("helper")}

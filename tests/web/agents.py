"""Agents for the browser tests' server: the demo agents, but "slow" waits for a file to appear.

The server runs in a child process, so the test releases the agent through the file
named by WEB_TEST_RELEASE_FILE instead of an in-process event. Async, like the demo
agents it wraps: the wait holds no thread and never blocks the server's loop.
"""

from __future__ import annotations

import os

import anyio

from app.agents import AgentInput, AgentReply
from app.agents.demo import registry as demo

WAIT_SECONDS = 30.0


class FileGate:
    """Answers "slow" only once the release file exists (bounded); everything else goes to inner."""

    def __init__(self, inner):
        self.inner = inner

    async def handle(self, message: AgentInput) -> AgentReply:
        if message.text == "slow":
            release = anyio.Path(os.environ["WEB_TEST_RELEASE_FILE"])
            with anyio.move_on_after(WAIT_SECONDS):
                # A file from another process: polled, there is no event to await.
                while not await release.exists():  # noqa: ASYNC110
                    await anyio.sleep(0.05)
                return AgentReply("Sorry for the wait: here I am.")
            raise TimeoutError("the test never released the slow agent")
        return await self.inner.handle(message)


registry = {**demo, "manager": FileGate(demo["manager"])}

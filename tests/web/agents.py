"""Agents for the browser tests' server: the demo agents, but "slow" waits for a file to appear.

The server runs in a child process, so the test releases the agent through the file
named by WEB_TEST_RELEASE_FILE instead of an in-process event.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from app.agents import AgentInput, AgentReply
from app.agents.demo import registry as demo

WAIT_SECONDS = 30.0


class FileGate:
    """Answers "slow" only once the release file exists (bounded); everything else goes to inner."""

    def __init__(self, inner):
        self.inner = inner

    def handle(self, message: AgentInput) -> AgentReply:
        if message.text == "slow":
            release = Path(os.environ["WEB_TEST_RELEASE_FILE"])
            deadline = time.monotonic() + WAIT_SECONDS
            while not release.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("the test never released the slow agent")
                time.sleep(0.05)
            return AgentReply("Sorry for the wait: here I am.")
        return self.inner.handle(message)


registry = {**demo, "manager": FileGate(demo["manager"])}

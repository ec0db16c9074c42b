"""Async agents that take their time, for the runtime's tests (AGENTS=tests.utils.slow_agents:registry).

A message's words tell the agent what to do before it answers, so that a server
process started by a test obeys the test:

| word          | what the agent does                                                           |
|---------------|-------------------------------------------------------------------------------|
| `sleep=S`     | awaits anyio.sleep(S) (S seconds, a float)                                    |
| `gate=PORT`   | waits at the tests/utils/gate.py gate on 127.0.0.1:PORT until it opens         |
| `gate1=PORT`  | the same, on the message's first attempt only (a run again passes at once)    |
| `log`         | logs "agent working" with logging.getLogger(__name__) (the request id shows)  |

The reply repeats the message and names the attempt: "slow: <text> attempt=<n>", so a
stored reply tells which attempt wrote it. `SyncLogging` is a sync agent (run on a
worker thread) that logs the same line.
"""

from __future__ import annotations

import logging

import anyio

from app.agents import AgentInput, AgentReply

logger = logging.getLogger(__name__)


def _words(text: str) -> dict[str, str]:
    return dict(word.partition("=")[::2] for word in text.split())


async def wait_at_gate(port: int) -> None:
    """Connect to the gate and read its one byte; raises if the gate closes without opening."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.receive(1)


def reply_to(message: AgentInput) -> AgentReply:
    return AgentReply(f"slow: {message.text} attempt={message.attempt}")


class Slow:
    async def handle(self, message: AgentInput) -> AgentReply:
        words = _words(message.text)
        if "log" in words:
            logger.info("agent working")
        if "gate" in words:
            await wait_at_gate(int(words["gate"]))
        if "gate1" in words and message.attempt == 1:
            await wait_at_gate(int(words["gate1"]))
        if "sleep" in words:
            await anyio.sleep(float(words["sleep"]))
        return reply_to(message)


class SyncLogging:
    """A sync agent: logs "agent working" from its worker thread, then answers."""

    def handle(self, message: AgentInput) -> AgentReply:
        logger.info("agent working")
        return reply_to(message)


registry = {"manager": Slow()}

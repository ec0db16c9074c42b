"""A deterministic registry for load tests (AGENTS=tests.utils.load_agents:registry).

A message's last word is its command: "lock" makes the manager hand the device to
scheduling, "unlock" makes scheduling release it, anything else keeps the lock as
it is. Every reply names its agent and repeats the whole message, so a stored or
returned reply can be matched to the message it answers.
"""

from __future__ import annotations

from app.agents import AgentInput, AgentReply, Handoff, Keep, Release


def command(text: str) -> str:
    words = text.split()
    return words[-1] if words else ""


class Manager:
    def handle(self, message: AgentInput) -> AgentReply:
        action = Handoff("scheduling") if command(message.text) == "lock" else Keep()
        return AgentReply(f"manager: {message.text}", lock=action)


class Scheduling:
    def handle(self, message: AgentInput) -> AgentReply:
        action = Release() if command(message.text) == "unlock" else Keep()
        return AgentReply(f"scheduling: {message.text}", lock=action)


registry = {"manager": Manager(), "scheduling": Scheduling()}


def expected_lock(lock: str | None, text: str) -> str | None:
    """The lock after text is handled with lock held before it."""
    if lock is None:
        return "scheduling" if command(text) == "lock" else None
    return None if command(text) == "unlock" else lock


def expected_agent(lock: str | None, text: str) -> str:
    """The agent whose reply is stored for text (the last one to answer it)."""
    return "scheduling" if lock is not None or command(text) == "lock" else "manager"

"""Agents for tests: scripted answers, a gate to hold an agent mid-message, a failing one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio

from app.agents import AgentInput, AgentReply, Choice, Handoff, Keep, Release
from app.agents.demo import registry as demo_registry


class Scripted:
    """Answers with a fixed reply and lock action, and records what it saw."""

    def __init__(self, name: str, action=None, context=None, reply: str | None = None):
        self.name, self.action, self.context = name, action or Keep(), context
        self.reply = reply
        self.seen: list[AgentInput] = []
        self._lock = threading.Lock()

    def handle(self, message: AgentInput) -> AgentReply:
        with self._lock:
            self.seen.append(message)
        action = self.action(message) if callable(self.action) else self.action
        return AgentReply(self.reply or f"{self.name}: {message.text}", lock=action, context=self.context)


class Gate:
    """Blocks inside handle() until released, so a test can act while an agent 'thinks'."""

    def __init__(self, inner, *, when: Callable[[AgentInput], bool] = lambda message: True):
        self.inner, self.when = inner, when
        self.entered = threading.Event()
        self.release = threading.Event()

    def handle(self, message: AgentInput) -> AgentReply:
        if self.when(message):
            self.entered.set()
            if not self.release.wait(30):
                raise TimeoutError("gate was never released")
        return self.inner.handle(message)


class Boom:
    """Always raises, like an LLM call that fails."""

    def handle(self, message: AgentInput) -> AgentReply:
        raise RuntimeError("model endpoint returned 500")


def routing_registry() -> dict:
    """manager hands 'sched*' to scheduling and 'bill*' to billing; others echo."""

    def route(message: AgentInput):
        if message.text.startswith("sched"):
            return Handoff("scheduling")
        if message.text.startswith("bill"):
            return Handoff("billing", ttl=120)
        return Keep()

    def scheduling_action(message: AgentInput):
        return Release() if message.text == "done" else Keep()

    return {
        "manager": Scripted("manager", route),
        "scheduling": Scripted("scheduling", scheduling_action),
        "billing": Scripted("billing", Keep()),
    }


__all__ = ["Boom", "Gate", "Offering", "Scripted", "Sleepy", "Viewer", "demo_registry", "routing_registry", "wait_for"]


class Offering:
    """Replies with the choices (and template) it was made with; records what it saw."""

    def __init__(self, choices=(), template=None, reply: str = "Pick one"):
        self.choices, self.template, self.reply = list(choices), template, reply
        self.seen: list[AgentInput] = []

    def handle(self, message: AgentInput) -> AgentReply:
        self.seen.append(message)
        return AgentReply(self.reply, choices=[Choice(i, t) for i, t in self.choices], template=self.template)


class Sleepy:
    """An async agent: each turn awaits anyio.sleep(seconds) (a model call that holds no thread), then echoes.

    Counts the turns it started and those cancelled mid-sleep (a timeout, a shutdown, a request's end).
    """

    def __init__(self, name: str = "manager", seconds: float = 0.5):
        self.name, self.seconds = name, seconds
        self.started = self.cancelled = 0

    async def handle(self, message: AgentInput) -> AgentReply:
        self.started += 1
        try:
            await anyio.sleep(self.seconds)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        return AgentReply(f"{self.name}: {message.text}")


class Viewer(Scripted):
    """A Scripted agent that takes attachments (images, locations...)."""

    accepts_attachments = True


def wait_for(predicate: Callable[[], object], seconds: float = 20.0) -> bool:
    """Poll predicate until it holds or seconds pass (a bound, not a sleep as synchronisation)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        threading.Event().wait(0.02)
    return bool(predicate())

"""Registries for the admin API tests, loadable with AGENTS=tests.sessions.agents:<name>."""

from __future__ import annotations

from app.agents import AgentInput, AgentReply, Handoff, Keep, Release
from tests.utils.agents import Scripted


def _manager(message: AgentInput):
    if message.text.startswith("sched"):
        return Handoff("scheduling")
    if message.text.startswith("bill"):
        return Handoff("billing", ttl=300)
    return Keep()


def _scheduling(message: AgentInput):
    if message.text.startswith("bill"):
        return Handoff("billing", ttl=300)
    return Release() if message.text == "done" else Keep()


def _billing(message: AgentInput):
    return Release() if message.text == "done" else Keep()


# manager hands off; scheduling keeps, hands to billing on "bill..." and releases on "done".
registry = {
    "manager": Scripted("manager", _manager),
    "scheduling": Scripted("scheduling", _scheduling),
    "billing": Scripted("billing", _billing),
}


class Noting:
    """Keeps no lock and patches the context with one key named after the message."""

    def handle(self, message: AgentInput) -> AgentReply:
        return AgentReply(f"noted {message.text}", lock=Keep(), context={"conversation_state": {message.text: True}})


noting = {"manager": Noting()}


# Defines the reserved lock holder of an operator takeover: load_registry refuses it.
with_human = {"manager": Noting(), "human": Noting()}

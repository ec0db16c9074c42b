"""Agents for turn tests, usable in child processes (AGENTS=tests.utils.turn_agents:registry).

- "slow <seconds> <tag>": the manager thinks that long on a first attempt (a slow LLM turn).
- "lock <tag>": the manager hands the device to `scheduling`, which answers at once.
- anything else: the holder answers at once.

Every reply reads "<agent>: <text> | after=<last earlier user message> | ctx=<conversation_state.last>",
and every turn sets the context's conversation_state.last to its text, so a stored reply shows
what the agent saw. With TURN_LOG set, each turn appends a JSON line
{"pid", "event": "start" | "end", "text", "attempt"} to that file, so a test can count
runs across processes.
"""

from __future__ import annotations

import json
import os
import time

from app.agents import AgentInput, AgentReply, Handoff, Keep


def log(event: str, message: AgentInput) -> None:
    path = os.environ.get("TURN_LOG")
    if not path:
        return
    line = json.dumps({"pid": os.getpid(), "event": event, "text": message.text, "attempt": message.attempt})
    with open(path, "a", encoding="utf-8") as file:  # one short O_APPEND write per line: lines never interleave
        file.write(line + "\n")


def turns(path: str) -> list[dict]:
    """The lines a TURN_LOG holds so far."""
    try:
        with open(path, encoding="utf-8") as file:
            return [json.loads(line) for line in file if line.strip()]
    except FileNotFoundError:
        return []


def describe(name: str, message: AgentInput) -> str:
    earlier = [item.content for item in message.history if item.role == "user"]
    last = earlier[-1] if earlier else "-"
    seen = message.context["conversation_state"].get("last", "-")
    return f"{name}: {message.text} | after={last} | ctx={seen}"


def remember(message: AgentInput) -> dict:
    return {"conversation_state": {"last": message.text}}


class Manager:
    def handle(self, message: AgentInput) -> AgentReply:
        log("start", message)
        words = message.text.split()
        if words[:1] == ["slow"] and message.attempt == 1:
            time.sleep(float(words[1]))  # the turn's work: a slow model call
        action = Handoff("scheduling") if words[:1] == ["lock"] else Keep()
        reply = AgentReply(describe("manager", message), lock=action, context=remember(message))
        log("end", message)
        return reply


class Scheduling:
    def handle(self, message: AgentInput) -> AgentReply:
        log("start", message)
        reply = AgentReply(describe("scheduling", message), context=remember(message))
        log("end", message)
        return reply


registry = {"manager": Manager(), "scheduling": Scheduling()}

"""Agents: who answers a message, and what happens to the device's lock afterwards.

The agent contract (README, "The agent contract"): the pipeline calls
`handle(AgentInput)` with no transaction open, renews the device's lease while it
runs, and bounds the turn by AGENT_TIMEOUT_SECONDS. A turn whose worker died is run
again with `attempt` 2.

`handle` is either a coroutine function (preferred) or a plain function:

- `async def handle(message) -> AgentReply` is awaited on the server's event loop.
  Past the timeout (or when the lease is lost, or at shutdown) it is cancelled: its
  pending await (an HTTP call to a model) is closed, and nothing after it runs.
- `def handle(message) -> AgentReply` runs on a worker thread, at most AGENT_THREADS
  at once. Past the timeout it cannot be stopped: it runs on, and what it returns is
  dropped.

An async agent must not block its loop (time.sleep, a sync HTTP or database client):
every other turn of the process waits while it does.

An agent may also stream (README, "Streamed replies"): `async def stream(message)`
yields text deltas (str) and optional StreamEvents, then one AgentReply whose
`reply` is the whole text. The pipeline streams a web turn through it when it exists;
an agent with only `handle` is streamed as one delta, its reply.

Display names: an agent may have a `display_name` attribute (a str, 1-60 characters),
what people see (the operator console, the chat page); without one it is the key
title-cased ("scheduling" -> "Scheduling", "front_desk" -> "Front Desk"). The key stays
what the API and the database carry. `display_name(registry, key)` reads it.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from app import validation
from app.context import ContextPatch
from app.errors import ConfigurationError

MANAGER = "manager"
# The lock holder for a person who took the conversation over (operator takeover): no
# agent runs while it holds, so a registry may not define it.
HUMAN = "human"


@dataclass(frozen=True)
class Keep:
    """Keep the lock as it is, sliding its expiry if the answering agent holds it."""


@dataclass(frozen=True)
class Release:
    """Release the lock: the next message goes to the manager."""


@dataclass(frozen=True)
class Handoff:
    """Give the lock to another agent.

    answered=False: the receiving agent answers this same message at once (its reply
    follows the first). answered=True: the reply given already is the receiving
    agent's answer (an SDK run that ended on it), so it is not run again; the lock
    passes to it for the next message.
    """

    to: str
    ttl: int | None = None
    answered: bool = False


LockAction = Keep | Release | Handoff


@dataclass(frozen=True)
class HistoryItem:
    """One earlier message of the device's current session, as an agent sees it.

    stopped: a reply whose turn was stopped (POST /api/chat/stop, or a new message in
    BURST_MODE=interrupt): content is the part written before the stop.
    """

    role: Literal["user", "assistant"]
    content: str
    agent: str | None
    created_at: datetime
    stopped: bool = False


@dataclass(frozen=True)
class AgentInput:
    """What an agent sees: the message, the stored session and the conversation so far.

    history: earlier exchanges of this session in the device's order, oldest first, at
    most AGENT_HISTORY_MESSAGES items. attempt: 1 on a first run, 2 or more when a
    worker died mid-turn and the message runs again. messages: the texts of a merged
    burst (BURST_MODE=merge), `text` being them joined by newlines; one item otherwise.
    choice_id: the id of a tapped choice (reply button, list row), the text being its
    title. attachments: media, location or contacts sent with the message, as
    {"type", "id", "mime_type", "caption", ...} dicts.
    """

    text: str
    tenant_id: str
    device_id: str
    context: dict[str, Any]
    lock: str | None  # the agent holding the lock when the message arrived
    history: tuple[HistoryItem, ...] = ()
    attempt: int = 1
    messages: tuple[str, ...] = ()
    choice_id: str | None = None
    attachments: tuple[dict[str, Any], ...] = ()
    channel: str = "web"


@dataclass(frozen=True)
class Choice:
    """A choice offered to the person: a reply button or a list row on WhatsApp."""

    id: str
    title: str


@dataclass(frozen=True)
class AgentReply:
    """An agent's answer: the reply, a context patch, the lock action, and what the channel shows.

    choices: up to 10 for the person to tap. template: a WhatsApp template message
    ({"name", "language", "components"}), sendable outside the customer-service window.
    metadata: stored on the reply message (for example an LLM run's token usage).
    agent: the registry key of the agent whose output the reply is, when it is not the agent
    called (an SDK run that handed on within itself, back to the manager included); None for
    the agent called. The reply is stored and reported under it; a key outside the registry
    is ignored. It moves no lock: `lock` does.
    """

    reply: str
    lock: LockAction = field(default_factory=Keep)
    context: ContextPatch | dict[str, Any] | None = None
    tools_used: list[str] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=list)
    template: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    agent: str | None = None


@dataclass(frozen=True)
class StreamEvent:
    """A tool call or its result inside a streamed reply (the UI shows them between text deltas).

    kind "tool-call": name and input (JSON-ready) set; kind "tool-result": output (JSON-ready)
    set. call_id pairs a result with its call.
    """

    kind: Literal["tool-call", "tool-result"]
    call_id: str
    name: str | None = None
    input: Any = None
    output: Any = None


# What `stream` yields: text deltas and events, ending with the AgentReply.
StreamItem = str | StreamEvent | AgentReply


class Agent(Protocol):
    """Anything with a handle method: plain rules, an LLM call, a graph.

    `async def handle(message) -> AgentReply` (preferred) and
    `def handle(message) -> AgentReply` both conform: a coroutine function's return
    value is an Awaitable[AgentReply]. The pipeline awaits the one and runs the other
    on a worker thread (see the module docstring for what a timeout does to each).
    """

    def handle(self, message: AgentInput) -> AgentReply | Awaitable[AgentReply]: ...


Registry = Mapping[str, Agent]

HUMAN_DISPLAY_NAME = "A person"


def display_name(registry: Registry, key: str) -> str:
    """What people see for agent key: its `display_name` attribute, else the key title-cased.

    `human` (an operator takeover) reads "A person"; a key not in the registry is title-cased too.
    """
    if key == HUMAN:
        return HUMAN_DISPLAY_NAME
    name = getattr(registry.get(key), "display_name", None)
    if isinstance(name, str) and 1 <= len(name.strip()) <= 60:
        return name.strip()
    return key.replace("_", " ").replace("-", " ").title()


def load_registry(path: str) -> Registry:
    """Import a registry from "package.module:attribute" and check it."""
    module_name, _, attribute = path.partition(":")
    try:
        registry = getattr(importlib.import_module(module_name), attribute or "registry")
    except (ImportError, AttributeError) as err:
        raise ConfigurationError(f"AGENTS={path!r} cannot be imported: {err}") from err
    if not isinstance(registry, Mapping) or MANAGER not in registry:
        raise ConfigurationError(f"AGENTS={path!r} must be a mapping of agent keys with a {MANAGER!r} agent")
    for key in registry:
        validation.agent_key(key)
    if HUMAN in registry:
        raise ConfigurationError(f"AGENTS={path!r} defines {HUMAN!r}, the reserved lock holder of an operator takeover")
    return registry

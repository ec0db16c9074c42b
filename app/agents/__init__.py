"""Agents: who answers a message, and what happens to the device's lock afterwards."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from app import validation
from app.context import ContextPatch
from app.errors import ConfigurationError

MANAGER = "manager"


@dataclass(frozen=True)
class Keep:
    """Keep the lock as it is, sliding its expiry if the answering agent holds it."""


@dataclass(frozen=True)
class Release:
    """Release the lock: the next message goes to the manager."""


@dataclass(frozen=True)
class Handoff:
    """Give the lock to another agent, which answers this same message at once."""

    to: str
    ttl: int | None = None


LockAction = Keep | Release | Handoff


@dataclass(frozen=True)
class AgentInput:
    """What an agent sees: the message and the stored session."""

    text: str
    tenant_id: str
    device_id: str
    context: dict[str, Any]
    lock: str | None  # the agent holding the lock when the message arrived


@dataclass(frozen=True)
class AgentReply:
    """An agent's answer: the reply, a context patch, and the lock action."""

    reply: str
    lock: LockAction = field(default_factory=Keep)
    context: ContextPatch | dict[str, Any] | None = None
    tools_used: list[str] = field(default_factory=list)


class Agent(Protocol):
    """Anything with a handle method: plain rules, an LLM call, a graph."""

    def handle(self, message: AgentInput) -> AgentReply: ...


Registry = Mapping[str, Agent]


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
    return registry

"""Running a turn's agents: the lock holder (or the manager) and those it hands off to.

`AgentRunner.decide` turns one Turn into an Outcome with no database work: it awaits an
async agent on the loop, runs a sync one on a worker thread under AGENT_THREADS, and
streams an agent's text through a DraftWriter when the pipeline gives it one. The
pipeline (app/pipeline/turn.py) bounds the call by AGENT_TIMEOUT_SECONDS and writes the
Outcome; an agent's failure becomes the failure reply, never an error of the request.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

import anyio

from app import validation
from app.agents import MANAGER, Agent, AgentInput, AgentReply, Handoff, Registry, Release
from app.context import ContextPatch, normalized
from app.ledger import Outcome, Pending, Turn
from app.streams.writer import DraftWriter, collect

logger = logging.getLogger(__name__)

MAX_HANDOFFS = 3
FAILURE_REPLY = "Sorry, something went wrong on our side. Please try again."
TEXT_ONLY_REPLY = "Sorry, I can only read text messages for now. Could you type your message?"


class AgentRunner:
    """The registry's agents, run for one turn at a time; threads of sync agents bounded by `threads`."""

    def __init__(self, registry: Registry, threads: anyio.CapacityLimiter):
        self.registry = registry
        self.threads = threads

    async def call(
        self, agent: Agent, message: AgentInput, writer: DraftWriter | None = None, key: str = MANAGER
    ) -> Any:
        """Stream an agent's `stream` into the writer; await an async handle; run a sync one on a worker
        thread under AGENT_THREADS. With no writer, a stream-only agent's deltas are dropped (its
        AgentReply holds the whole text)."""
        stream = getattr(agent, "stream", None)
        if writer is not None:
            writer.begin_agent(key)
        if stream is not None and writer is not None:
            return await writer.consume(stream(message))
        if stream is not None and not hasattr(agent, "handle"):
            return await collect(stream(message))
        handle = agent.handle
        if inspect.iscoroutinefunction(handle):
            return await handle(message)
        # abandon_on_cancel: a timeout or a stop gives up on the thread at once (it cannot be
        # interrupted); the result it returns later goes nowhere.
        result = await anyio.to_thread.run_sync(handle, message, limiter=self.threads, abandon_on_cancel=True)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def decide(
        self,
        turn: Turn,
        tenant: str,
        device: str,
        context: dict[str, Any],
        lock: str | None,
        *,
        writer: DraftWriter | None = None,
    ) -> Outcome:
        """Run the lock holder (or the manager) and any agents it hands off to; no database work here
        (the writer, when given, streams the agents' text: app/streams/writer.py)."""
        started = time.perf_counter()
        agent_before = lock
        if lock is not None and lock not in self.registry:
            logger.warning("lock names unknown agent %s; the manager takes over and the lock is released", lock)
            lock = None
        key, patch = lock or MANAGER, ContextPatch()
        replies: list[str] = []
        tools: list[str] = []
        ttl: int | None = None
        choices: tuple[dict[str, str], ...] = ()
        template: dict[str, Any] | None = None
        metadata: dict[str, Any] = {}
        message = agent_input(turn, tenant, device, normalized(context), lock)
        author = None  # who wrote the last reply, when an agent names another than itself (AgentReply.agent)
        for _ in range(MAX_HANDOFFS + 1):
            author = None
            agent = self.registry[key]
            if message.attachments and not getattr(agent, "accepts_attachments", False):
                replies.append(TEXT_ONLY_REPLY)
                break
            try:
                answer = await self.call(agent, message, writer, key)
                if not isinstance(answer, AgentReply):
                    raise TypeError(f"agent {key} returned {type(answer).__name__}, not AgentReply")
                patch = patch.then(ContextPatch.parse(answer.context))
                validation.storable_json([answer.metadata, answer.template], "reply")  # stored with the reply
            except Exception as err:  # noqa: BLE001 - an agent's failure must not fail the request
                logger.error("agent %s failed: %s", key, type(err).__name__)  # the text may hold personal data
                return failed(agent_before, f"{type(err).__name__}: {err}", ms(started), agent=key, tools=tools)
            replies.append(answer.reply)
            author = answer.agent if answer.agent in self.registry else None
            tools.extend(answer.tools_used)
            choices = tuple({"id": c.id, "title": c.title} for c in answer.choices[:10])
            template, metadata = answer.template, {**metadata, **answer.metadata}
            action = answer.lock
            if isinstance(action, Handoff) and action.to in self.registry and action.to != key:
                lock, key, ttl = action.to, action.to, validation.ttl(action.ttl)
                if action.answered:  # the reply is already the receiving agent's
                    break
                message = agent_input(turn, tenant, device, message.context, lock)
                continue
            if isinstance(action, Handoff):
                logger.error("agent %s handed off to unknown agent %s; lock unchanged", key, action.to)
            elif isinstance(action, Release):
                lock = None
            break
        reply = " ".join(part for part in replies if part) or "…"
        return Outcome(
            reply,
            author or key,
            agent_before,
            lock,
            ttl,
            patch.as_json(),
            tools,
            ms(started),
            choices=choices,
            template=template,
            metadata=metadata,
        )

    async def answer_alone(self, text: str, metadata: dict[str, Any], tenant: str, device: str) -> str:
        """The manager's reply with no store (degraded mode): no history, no context; the failure reply on error."""
        turn = Turn((Pending(0, text, metadata),))
        try:
            answer = await self.call(self.registry[MANAGER], agent_input(turn, tenant, device, normalized({}), None))
            return answer.reply
        except Exception:
            logger.exception("manager failed in stateless mode")
            return FAILURE_REPLY


def agent_input(turn: Turn, tenant: str, device: str, context: dict[str, Any], lock: str | None) -> AgentInput:
    last = turn.last.metadata
    texts = tuple(message.text for message in turn.messages)
    attachments = tuple(item for message in turn.messages for item in message.metadata.get("attachments") or ())
    """What the turn's agents see: its messages joined, the stored context, lock and history."""
    return AgentInput(
        "\n".join(texts),
        tenant,
        device,
        context,
        lock,
        history=turn.history,
        attempt=turn.attempt,
        messages=texts,
        choice_id=last.get("choice_id"),
        attachments=attachments,
        channel=last.get("channel") or "web",
    )


def failed(
    lock: str | None, error: str, elapsed_ms: int, *, agent: str | None = None, tools: list[str] | None = None
) -> Outcome:
    """The failure reply, stored for the turn; the lock and context are left as they were."""
    return Outcome(
        FAILURE_REPLY,
        agent or lock or MANAGER,
        lock,
        lock,
        None,
        {},
        tools or [],
        elapsed_ms,
        status="failed",
        error=error[:500],
    )


def stopped(lock: str | None, writer: DraftWriter, elapsed_ms: int) -> Outcome:
    """A turn stopped by POST /api/chat/stop: the text streamed so far, marked stopped; no lock change or patch."""
    return Outcome(
        writer.text,
        writer.agent or lock or MANAGER,
        lock,
        lock,
        None,
        {},
        [],
        elapsed_ms,
        metadata={"stopped": True, **({"stream_events": writer.events} if writer.events else {})},
    )


def ms(started: float) -> int:
    """Milliseconds since started (a time.perf_counter())."""
    return round((time.perf_counter() - started) * 1000)

"""What goes into the pipeline and what comes out: an inbound message, its result, and the channels' hooks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.agents import HUMAN
from app.ledger import Answer, Pending

# Called after each stored reply (a channel pushes it); a coroutine function or a plain
# function, which then runs on a worker thread so that it never blocks the loop.
OnReply = Callable[[Pending, Answer], Awaitable[None] | None]
# A channel's on_reply (app.services.ReplyChannel.replier): always a coroutine function.
ChannelReplier = Callable[[Pending, Answer], Awaitable[None]]
# Called when a turn starts on a message and again at each lease renewal while the
# agent runs (about every LEASE_SECONDS / 3); a channel shows "typing..." with it.
# It runs beside the turn: a slow channel API never delays a renewal.
OnWorking = Callable[[Pending], Awaitable[None] | None]


@dataclass(frozen=True)
class Inbound:
    """A message as a channel hands it over.

    metadata keys the pipeline reads: "channel" ("web", "whatsapp"), "choice_id" (a
    tapped choice) and "attachments" (a list of {"type", "id", ...} dicts); the rest
    is stored with the message and handed to the channel with the reply. sent_at is
    the channel's own timestamp of the message, when it has one.
    """

    tenant_id: str
    device_id: str
    text: str
    external_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    sent_at: datetime | None = None


@dataclass(frozen=True)
class Result:
    """What became of one inbound message."""

    # "answered", "queued" (stored, answer pending), "held" (stored for the person who took the
    # conversation over: no reply, agent "human") or "degraded" (store unreachable)
    status: str
    reply: str | None = None
    agent: str | None = None
    lock_agent: str | None = None
    lock_expires_at: datetime | None = None
    message_id: int | None = None
    duplicate: bool = False
    merged: bool = False  # answered together with other messages of a burst (BURST_MODE=merge)
    choices: tuple[dict[str, str], ...] = ()  # {"id", "title"} offered with the reply
    stopped: bool = False  # POST /api/chat/stop ended the turn: reply is the partial text

    @property
    def degraded(self) -> bool:
        return self.status == "degraded"


def answered(answer: Answer, message_id: int | None, *, duplicate: bool = False) -> Result:
    if answer.held:
        return Result("held", None, HUMAN, answer.lock_agent, answer.lock_expires_at, message_id, duplicate)
    return Result(
        "answered",
        answer.reply,
        answer.agent,
        answer.lock_agent,
        answer.lock_expires_at,
        message_id,
        duplicate,
        answer.merged,
        answer.choices,
        answer.stopped,
    )

"""Request and response shapes of the session admin API (app/api/routes/sessions.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app import validation
from app.admin.transfer import AgentKey, Delivery
from app.context import ContextPatch
from app.core.config import MAX_TTL_SECONDS

Status = Literal["active", "idle", "ended"]


def session_id_text(value: str | None) -> str | None:
    if value is not None and not all(c.isprintable() and not c.isspace() for c in value):
        raise ValueError("session id must be printable characters without whitespace")
    return value


class SessionItem(BaseModel):
    device_id: str
    session_id: str | None
    status: Status
    active_agent: str | None
    locked_at: datetime | None
    expires_at: datetime | None
    last_activity_at: datetime
    message_count: int


class SessionList(BaseModel):
    items: list[SessionItem]
    total: int


class HistoryItem(BaseModel):
    session_id: str | None
    status: Status
    started_at: datetime | None
    last_activity_at: datetime | None
    message_count: int


class History(BaseModel):
    items: list[HistoryItem]


class Context(BaseModel):
    conversation_state: dict[str, Any]
    user_preferences: dict[str, Any]
    interrupted_queries: list[Any]
    recent_interactions: list[Any]


class Lock(BaseModel):
    agent: str | None
    locked_at: datetime | None
    expires_at: datetime | None
    operator: str | None = Field(None, description='the person holding a "human" lock (operator takeover)')


class SessionDetail(BaseModel):
    device_id: str
    session_id: str | None
    status: Status
    session_started_at: datetime | None
    last_activity_at: datetime
    session_ttl: int
    lock: Lock
    context: Context
    version: int
    message_count: int
    created_at: datetime
    updated_at: datetime


class MessageItem(BaseModel):
    id: int
    role: str
    content: str
    agent: str | None
    created_at: datetime = Field(description="when the message was stored (arrival)")
    sent_at: datetime | None = Field(description="the channel's own send time (WhatsApp's timestamp), UTC")
    session_id: str | None
    status: str | None
    has_error: bool
    error_message: str | None
    reply_to: int | None
    processing_time_ms: int | None
    tools_used: list[Any]
    delivery: Delivery | None = Field(
        description="a WhatsApp reply's delivery state (README, Delivery states); null for other messages; "
        "failed: error_message says why"
    )


class MessagePage(BaseModel):
    items: list[MessageItem]
    next_before: int | None = Field(description="pass as ?before= for the next (older) page; null on the last")


class ContextPatchBody(ContextPatch):
    """A context patch; objects merge key by key (null removes a key), lists append."""


class ContextResponse(BaseModel):
    context: Context


Ttl = Annotated[int, Field(ge=1, le=MAX_TTL_SECONDS, strict=True), AfterValidator(validation.ttl)]


class LockRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: AgentKey
    ttl: Ttl | None = Field(None, description="seconds; also becomes the session_ttl; default: the current one")


class LockChange(BaseModel):
    agent: str | None
    locked_at: datetime | None
    expires_at: datetime | None
    session_ttl: int
    version: int
    previous_agent: str | None = Field(description="the agent that held a live lock before the override")


class Timings(BaseModel):
    db_ms: int | None
    agent_ms: int | None
    total_ms: int | None


class AuditItem(BaseModel):
    id: int
    event: str
    at: datetime
    from_agent: str | None
    to_agent: str | None
    session_id: str | None
    message_id: int | None
    timings: Timings


class AuditPage(BaseModel):
    items: list[AuditItem]
    next_after: int | None = Field(description="pass as ?after= for the next page; null on the last")


class ImportResult(BaseModel):
    device_id: str
    session_id: str | None
    messages: int
    audit: int
    dropped_metadata: int = Field(
        description="messages whose channel routing metadata (WhatsApp number, phone, channel) was dropped: "
        "an imported device is answered on WhatsApp only after its user writes again"
    )

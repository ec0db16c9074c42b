"""The operator inbox under /api/inbox, the registry's display names, and the console's one event stream.

Admin keys and tenants as the session admin API. The event stream
(GET /api/inbox/events, text/event-stream) sends `event: changed` whenever something the
inbox shows may have changed: at once when a turn of the tenant finishes in this process
or an operator acts in this process (app.runtime Wakeups.watch), else when its poll of the
database sees it (other instances, status callbacks); pace, heartbeat and length as
app/api/events.py says.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from app.admin.cursor import MAX_CHARS
from app.admin.inbox import InboxStore
from app.agents import HUMAN, display_name
from app.api.auth import AdminTenant
from app.api.deps import Agents, AppServices, Db
from app.api.errors import ErrorBody
from app.api.events import change_events
from app.api.models import AgentList, AgentName
from app.sql import DeliveryState

router = APIRouter(tags=["inbox"])

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 422)}


async def get_inbox(database: Db) -> InboxStore:
    return InboxStore(database.engine)


Inbox = Annotated[InboxStore, Depends(get_inbox)]


class LastMessage(BaseModel):
    id: int
    role: str
    agent: str | None
    preview: str = Field(description="the first 140 characters")
    delivery: DeliveryState | None = Field(description="a WhatsApp reply's delivery state")


class Conversation(BaseModel):
    device_id: str
    channel: Literal["web", "whatsapp"]
    name: str = Field(
        description="the WhatsApp profile name when stored (named), else a short label stable for the device"
    )
    named: bool
    agent: str | None = Field(description="the live lock's holder (a key; human: a person)")
    operator: str | None
    expires_at: datetime | None
    last_message: LastMessage | None
    last_at: datetime
    waiting: int = Field(description="held messages no operator reply came after: the conversation needs a person")


class ConversationList(BaseModel):
    items: list[Conversation]
    next_cursor: str | None = Field(
        description="pass as `cursor` (with the same filters) for the next page; null on the last page. "
        "A page filtered by agent or channel may hold fewer than `limit` items, even none, and still have one"
    )


@router.get("/api/inbox", response_model=ConversationList, responses=ERRORS)
async def inbox(
    tenant: AdminTenant,
    store: Inbox,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    needs_person: bool = False,
    agent: Annotated[str | None, Query(max_length=50, pattern=r"^[a-z][a-z0-9_-]{0,49}$")] = None,
    channel: Literal["web", "whatsapp"] | None = None,
    cursor: Annotated[str | None, Query(min_length=1, max_length=MAX_CHARS)] = None,
) -> ConversationList:
    """The tenant's conversations, newest message first, a page at a time; filters: needs_person, agent (lock
    holder), channel. A cursor not given by this inbox with the same filters is a 422 `invalid_cursor`."""
    page = await store.conversations(
        tenant, limit=limit, needs_person=needs_person, agent=agent, channel=channel, cursor=cursor
    )
    items = []
    for row in page.items:
        last = None
        if row["last_id"] is not None:
            last = LastMessage(
                id=row["last_id"],
                role=row["last_role"],
                agent=row["last_agent"],
                preview=row["last_preview"],
                delivery=row["last_delivery"],
            )
        items.append(
            Conversation(
                **{
                    k: row[k]
                    for k in (
                        "device_id",
                        "channel",
                        "name",
                        "named",
                        "agent",
                        "operator",
                        "expires_at",
                        "last_at",
                        "waiting",
                    )
                },
                last_message=last,
            )
        )
    return ConversationList(items=items, next_cursor=page.next_cursor)


@router.get("/api/agents", response_model=AgentList, responses=ERRORS)
async def agents(tenant: AdminTenant, registry: Agents) -> AgentList:
    """The registry's agents with what people see for each (and `human`, a person holding a takeover)."""
    keys = [*registry, HUMAN]
    return AgentList(items=[AgentName(key=key, display_name=display_name(registry, key)) for key in keys])


@router.get("/api/inbox/events", responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}})
async def inbox_events(tenant: AdminTenant, store: Inbox, services: AppServices) -> StreamingResponse:
    """Server-sent events: `changed` (data {"token"}) when the inbox may have changed; see the module doc."""

    async def ask() -> dict[str, str]:
        return {"token": await store.changes(tenant)}

    return change_events(
        ask,
        lambda seconds: services.runtime.wakeups.watch(tenant, seconds),
        services.runtime,
        services.settings.events_stream_seconds,
    )

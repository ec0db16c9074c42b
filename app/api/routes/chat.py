"""The web chat API: POST /api/chat, and the device's own conversations under /api/chat.

Every route but POST /api/devices speaks for one device: X-Device-ID (signed for its
tenant when DEVICE_ID_SECRET is set; 400 missing or malformed, 401 unsigned or signed for
another tenant) and X-Tenant-ID (one of WEB_TENANTS, else 400 unknown_tenant).
A device sees only its own data: another device's session answers the same 404
as a session that does not exist.

GET /api/chat/events is read with fetch (as the streamed replies are), not EventSource:
EventSource cannot send headers, and the device id in a query string would land in
access logs, proxies and browser history, and need a second way of authenticating.
With the header the stream is authenticated, and bound to the device's tenant, exactly
as every other route here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, Field

from app import devices, rate_limits
from app.agents import HUMAN, display_name
from app.api.auth import WebDevice, WebTenant
from app.api.deps import Agents, AppServices, AppSettings, Db, History, Pipe, Sessions
from app.api.errors import ApiError, ErrorBody, mark_stored
from app.api.events import change_events
from app.api.models import AgentList, AgentName
from app.pipeline import Inbound, Result
from app.validation import ID_SCHEMA, MAX_ID

router = APIRouter(tags=["chat"])

# No NUL: PostgreSQL text and jsonb cannot hold it.
NO_NUL = r"^[^\x00]*$"


class ChatRequest(BaseModel):
    message: str = Field(min_length=1, max_length=4096, pattern=NO_NUL)
    choice_id: str | None = Field(
        None, min_length=1, max_length=256, pattern=NO_NUL, description="the id of a choice the user tapped"
    )


class LockState(BaseModel):
    agent: str | None
    expires_at: datetime | None


class Choice(BaseModel):
    id: str
    title: str


class ChatResponse(BaseModel):
    reply: str | None = Field(
        description='null while a person holds the conversation (agent "human"): the message is stored for '
        "them and their reply appears in GET /api/chat/messages"
    )
    agent: str
    device_id: str
    degraded: bool
    merged: bool = Field(description="answered together with other messages of a burst")
    stopped: bool = Field(False, description="POST /api/chat/stop ended the turn: reply is its partial text")
    choices: list[Choice] = Field(description="answers the agent offers; send one's title with its choice_id")
    lock: LockState


class Queued(BaseModel):
    status: str = "queued"
    device_id: str
    message_id: int | None = Field(description="the stored message; its reply appears in GET /api/chat/messages")
    message: str


def idempotency_external_id(device_id: str, key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable characters")
    return f"web:{device_id}:{key}"


def chat_response(device_id: str, result: Result) -> ChatResponse:
    return ChatResponse(
        reply=None if result.status == "held" else result.reply or "",
        agent=result.agent or "manager",
        device_id=device_id,
        degraded=result.degraded,
        merged=result.merged,
        stopped=result.stopped,
        choices=[Choice(id=choice["id"], title=choice["title"]) for choice in result.choices],
        lock=LockState(agent=result.lock_agent, expires_at=result.lock_expires_at),
    )


class NewSession(BaseModel):
    session_id: str


class Device(BaseModel):
    device_id: str


class MessageItem(BaseModel):
    id: int
    role: str
    content: str
    agent: str | None
    created_at: datetime
    sent_at: datetime | None = Field(None, description="the channel's own send time (WhatsApp's timestamp), UTC")
    reply_to: int | None = Field(description="for a reply: the id of the message it answers")
    stopped: bool = Field(False, description="a reply cut short by POST /api/chat/stop: the text written until then")


class MessagePage(BaseModel):
    items: list[MessageItem]
    next_before: int | None = Field(description="pass as ?before= for the next (older) page; null on the last")


class SessionItem(BaseModel):
    session_id: str | None
    status: Literal["active", "idle", "ended"]
    started_at: datetime | None
    last_activity_at: datetime | None
    message_count: int


class SessionList(BaseModel):
    items: list[SessionItem]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in (400, 401, *codes)}


def _session_id(value: str | None) -> str | None:
    if value is not None and not all(c.isprintable() and not c.isspace() for c in value):
        raise ValueError("session id must be printable characters without whitespace")
    return value


SESSION_ID = {"min_length": 1, "max_length": 128, "json_schema_extra": ID_SCHEMA}
NO_SESSION = "no such session for this device"


@router.post(
    "/api/devices", status_code=201, response_model=Device, responses={c: {"model": ErrorBody} for c in (400, 429)}
)
def new_device(request: Request, settings: AppSettings, database: Db, tenant: WebTenant) -> Device:
    """Issue a device id for a new web chat client of the X-Tenant-ID tenant (signed, and bound to
    that tenant, when DEVICE_ID_SECRET is set); 429 past RATE_LIMIT_NEW_DEVICES from the client's address."""
    # The address of the connection as the ASGI server reports it: never X-Forwarded-For
    # itself (uvicorn rewrites it only for the proxies FORWARDED_ALLOW_IPS trusts).
    address = request.client.host if request.client else "unknown"
    rate_limits.hit(database.engine, rate_limits.NEW_DEVICES, address, settings.rate_limit_new_devices)
    secret = settings.device_id_secret.get_secret_value() if settings.device_id_secret else None
    return Device(device_id=devices.issue(secret, tenant))


@router.post("/api/chat/new", status_code=201, response_model=NewSession, responses=_errors())
def new_chat(device: WebDevice, sessions: Sessions) -> NewSession:
    """Start a new conversation (the "New conversation" button): fresh context, lock released."""
    return NewSession(session_id=sessions.start_new_session(device.device_id, tenant_id=device.tenant_id))


@router.post(
    "/api/chat",
    response_model=ChatResponse,
    responses={202: {"model": Queued}, **_errors(413, 422, 429, 503)},
)
async def chat(
    request: Request,
    body: ChatRequest,
    device: WebDevice,
    pipeline: Pipe,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> ChatResponse | JSONResponse:
    """Send a message; 200 with the reply, 202 when it waits behind a busy conversation.

    429 (with Retry-After, nothing stored) past RATE_LIMIT_PER_DEVICE new messages in the
    device's minute; 503 with Retry-After (nothing stored) when the instance holds
    MAX_CONCURRENT_TURNS turns, `overloaded`; 503 `interrupted` with Retry-After when the
    server stopped before the turn finished (its message, when stored, is kept and answered:
    retry with the same Idempotency-Key to get the reply).
    """
    external_id = idempotency_external_id(device.device_id, idempotency_key)
    metadata: dict[str, Any] = {"channel": "web"}
    if body.choice_id is not None:
        metadata["choice_id"] = body.choice_id
    with pipeline.runtime.slot():
        inbound = Inbound(device.tenant_id, device.device_id, body.message, external_id, metadata)
        # Stored: a shutdown that interrupts the turn says the message is kept (app/api/errors.py).
        result = await pipeline.handle(inbound, on_claimed=lambda message_id: mark_stored(request.scope, message_id))
    if result.status == "queued":
        queued = Queued(
            device_id=device.device_id,
            message_id=result.message_id,
            message="your message is stored and will be answered in order; its reply appears in "
            "GET /api/chat/messages, or retry with the same Idempotency-Key to get it",
        )
        return JSONResponse(queued.model_dump(), status_code=202)
    return chat_response(device.device_id, result)


@router.get("/api/chat/messages", response_model=MessagePage, responses=_errors(404, 422))
def my_messages(
    device: WebDevice,
    history: History,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    session_id: Annotated[str | None, Query(**SESSION_ID), AfterValidator(_session_id)] = None,
) -> MessagePage:
    """The device's messages of one session (default: the current one), newest first; page with ?before=."""
    rows = history.messages(device.tenant_id, device.device_id, limit=limit + 1, before=before, session_id=session_id)
    if rows is None:
        raise ApiError(404, "not_found", NO_SESSION)
    items = [MessageItem(**row) for row in rows[:limit]]
    return MessagePage(items=items, next_before=items[-1].id if len(rows) > limit else None)


@router.get("/api/chat/events", responses={**_errors(429), 200: {"content": {"text/event-stream": {}}}})
async def my_events(device: WebDevice, history: History, services: AppServices) -> StreamingResponse:
    """Server-sent events for the chat page: `changed` with {"newest": the device's newest message id or null,
    "lock": {"agent", "expires_at"}}, at once, then whenever either changes (an operator's reply or takeover, a
    queued message's reply): woken in this process by the device's turns and operator actions, else by a poll
    at most once a second; see app/api/events.py. 429 `too_many_streams` past EVENT_STREAMS_PER_DEVICE open
    on this instance."""
    key = (device.tenant_id, device.device_id)
    services.runtime.check_event_streams(key)  # 429 too_many_streams: EVENT_STREAMS_PER_DEVICE here already
    return change_events(
        lambda: history.now(*key),
        lambda seconds: services.runtime.wakeups.watch_device(key, seconds),
        services.runtime,
        services.settings.events_stream_seconds,
        hold=lambda: services.runtime.event_stream(key),
    )


@router.get("/api/chat/agents", response_model=AgentList, responses=_errors())
async def my_agents(device: WebDevice, registry: Agents) -> AgentList:
    """What the page shows for each agent key (`display_name`; `human` is "A person"); the keys stay in the API."""
    keys = [*registry, HUMAN]
    return AgentList(items=[AgentName(key=key, display_name=display_name(registry, key)) for key in keys])


@router.get("/api/chat/sessions", response_model=SessionList, responses=_errors())
def my_sessions(device: WebDevice, history: History) -> SessionList:
    """The device's sessions, newest first; only the current one can be active or idle."""
    rows = history.sessions(device.tenant_id, device.device_id)
    return SessionList(items=[SessionItem(**row) for row in rows])


@router.delete("/api/chat/sessions/{session_id}", status_code=204, response_class=Response, responses=_errors(404, 422))
def delete_my_session(
    session_id: Annotated[str, Path(**SESSION_ID), AfterValidator(_session_id)],
    device: WebDevice,
    history: History,
) -> Response:
    """Erase the messages of one of the device's sessions; the current lock and context stay."""
    if not history.delete_session(device.tenant_id, device.device_id, session_id):
        raise ApiError(404, "not_found", NO_SESSION)
    return Response(status_code=204)


@router.delete("/api/chat/history", status_code=204, response_class=Response, responses=_errors())
def delete_my_history(device: WebDevice, history: History) -> Response:
    """Erase everything stored for the device: state, messages, deduplication ids and audit."""
    history.erase(device.tenant_id, device.device_id)
    return Response(status_code=204)

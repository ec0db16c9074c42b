"""Operator takeover under /api/sessions/{device_id}: take over, reply as a person, release.

Admin keys and tenants exactly as the rest of the session admin API: another
tenant's device answers 404 like one that does not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from app import validation
from app.admin.schemas import Ttl
from app.admin.takeover import DEFAULT_TTL, TakeoverStore
from app.admin.transfer import AgentKey
from app.api.auth import AdminTenant
from app.api.deps import Agents, AppServices, Db, OperatorSend, Pipe
from app.api.errors import ApiError
from app.api.routes.sessions import DeviceId, _errors, _not_found
from app.devices import canonical_device_id

router = APIRouter(tags=["takeover"])

NO_NUL = r"^[^\x00]*$"


async def get_takeover(database: Db) -> TakeoverStore:
    return TakeoverStore(database.engine)


Takeovers = Annotated[TakeoverStore, Depends(get_takeover)]


def _storable_text(value: str | None) -> str | None:
    if value is not None:
        validation.storable_json(value)  # ValueError (lone surrogates): 422
    return value


class TakeoverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operator: Annotated[str, AfterValidator(_storable_text)] = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="the person taking over, as shown in the console and stored with replies",
    )
    ttl: Ttl = Field(DEFAULT_TTL, description="seconds; each reply slides the lock by it; 1 s to 30 days")


class TakeoverLock(BaseModel):
    agent: str
    operator: str
    locked_at: datetime
    expires_at: datetime
    previous_agent: str | None = Field(description="the agent that held a live lock before the takeover")
    held: int = Field(description="pending messages now held for the operator")


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    answer_held: bool = Field(
        False, description="the bot answers, in order, the held messages no operator reply came after"
    )
    agent: AgentKey | None = Field(
        None,
        description="absent: the agent that held the lock before the takeover gets it back, with the time it "
        "had left; a registry key: that agent, for the session_ttl; null: no agent (the manager answers next)",
    )


class Released(BaseModel):
    agent: str | None = Field(description="the lock's holder now")
    expires_at: datetime | None
    previous_agent: str
    version: int
    answered: int = Field(description="held messages the bot answered (answer_held)")


class Template(BaseModel):
    """A WhatsApp message template (Cloud API `template` object)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=512, pattern=r"^[a-z0-9_]+$")
    language: dict[str, str] = Field(default_factory=lambda: {"code": "en"}, description='e.g. {"code": "en_US"}')
    components: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _storable(self) -> Template:
        validation.storable_json([self.language, self.components], "template")  # ValueError: 422
        return self


class OperatorMessage(BaseModel):
    """Exactly one of text (free-form) and template."""

    model_config = ConfigDict(extra="forbid")

    text: Annotated[str | None, AfterValidator(_storable_text)] = Field(
        None, min_length=1, max_length=4096, pattern=NO_NUL
    )
    template: Template | None = None

    @model_validator(mode="after")
    def _one(self) -> OperatorMessage:
        if (self.text is None) == (self.template is None):
            raise ValueError("give exactly one of text and template")
        return self


class StoredMessage(BaseModel):
    id: int
    role: str
    content: str
    agent: str
    operator: str | None
    created_at: datetime
    session_id: str | None
    reply_to: int | None = Field(description="the latest held message, which this reply answers")
    channel: str
    delivery: str | None = Field(
        description="WhatsApp: sent, retry (the cleanup run sends it), failed; null on the web (read by polling)"
    )
    lock_expires_at: datetime | None = Field(description="the human lock's expiry, slid by this reply")


@router.post("/api/sessions/{device_id}/takeover", response_model=TakeoverLock, responses=_errors(404))
async def take_over(
    device_id: DeviceId, body: TakeoverRequest, tenant: AdminTenant, store: Takeovers, services: AppServices
) -> TakeoverLock:
    """A person takes the conversation: the lock becomes `human` (audited as "takeover"), whatever held it."""
    device = canonical_device_id(device_id)
    row = await store.take_over(tenant, device, body.operator, body.ttl)
    if row is None:
        raise _not_found()
    services.runtime.wakeups.changed((tenant, device))  # the device's chat pages and the consoles here, at once
    return TakeoverLock(agent=row["active_agent"], **{k: v for k, v in row.items() if k != "active_agent"})


@router.delete("/api/sessions/{device_id}/takeover", response_model=Released, responses=_errors(404, 409))
async def release(
    device_id: DeviceId,
    tenant: AdminTenant,
    store: Takeovers,
    pipeline: Pipe,
    send: OperatorSend,
    registry: Agents,
    services: AppServices,
    body: Annotated[ReleaseRequest | None, Body()] = None,
) -> Released:
    """Hand the conversation back to the bot (audited as "release"): by default to the agent the takeover
    displaced, where it was; answer_held: the bot answers the held messages no operator reply answered."""
    device = canonical_device_id(device_id)
    body = body or ReleaseRequest()
    resume = "agent" not in body.model_fields_set
    if not resume and body.agent is not None and body.agent not in registry:
        raise ApiError(422, "unknown_agent", f"body.agent: no agent {body.agent!r} in the registry")
    row = await store.release(tenant, device, answer_held=body.answer_held, resume=resume, agent=body.agent)
    if row is None:
        raise _not_found()
    if not row["taken"]:
        raise ApiError(409, "not_taken_over", "no person holds this conversation (released, or the lock expired)")
    services.runtime.wakeups.changed((tenant, device))
    answered = 0
    if row["resumed"]:
        answered = await pipeline.drain(tenant, device, send.on_reply(pipeline))
    return Released(
        agent=row["agent"],
        expires_at=row["expires_at"],
        previous_agent="human",
        version=row["version"],
        answered=answered,
    )


@router.post(
    "/api/sessions/{device_id}/messages", status_code=201, response_model=StoredMessage, responses=_errors(404, 409)
)
async def operator_reply(
    device_id: DeviceId,
    body: OperatorMessage,
    tenant: AdminTenant,
    store: Takeovers,
    send: OperatorSend,
    services: AppServices,
) -> StoredMessage:
    """The operator's reply: stored as the `human` agent's, sent through the device's channel, slides the lock."""
    device = canonical_device_id(device_id)
    template = None if body.template is None else body.template.model_dump()
    if body.text is not None:
        text = body.text
    elif body.template is not None:
        text = f"[template {body.template.name}]"
    else:  # OperatorMessage's validator already refuses a body with neither
        raise ApiError(422, "validation_error", "give exactly one of text and template")
    reply = await store.reply(tenant, device, text, template=template)
    if reply.refused == "no_state":
        raise _not_found()
    if reply.refused == "not_taken_over":
        raise ApiError(409, "not_taken_over", "take the conversation over first (POST .../takeover)")
    if reply.refused == "outside_window":
        raise ApiError(
            409,
            "outside_window",
            "more than 24 hours since the user's last WhatsApp message: only a template can be sent",
        )
    if reply.refused == "template_needs_whatsapp":
        raise ApiError(422, "template_needs_whatsapp", "templates can only be sent to WhatsApp devices")
    message = reply.message
    if message is None:  # a Reply without a message is refused: one refusal this route does not map
        raise RuntimeError(f"the operator's reply was refused: {reply.refused}")
    services.runtime.wakeups.changed((tenant, device))
    delivery = await send.deliver(message["id"]) if reply.channel == "whatsapp" else None
    return StoredMessage(**message, channel=reply.channel, delivery=delivery, lock_expires_at=reply.lock_expires_at)

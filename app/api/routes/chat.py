"""POST /api/chat: the web chat endpoint."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app import devices, validation
from app.api.deps import AppSettings, Pipe, Sessions
from app.api.errors import ApiError
from app.core.config import Settings
from app.errors import InvalidInput
from app.pipeline import Inbound, Result

router = APIRouter(tags=["chat"])
security = logging.getLogger("app.security")


class ChatRequest(BaseModel):
    # No NUL: PostgreSQL text cannot hold it.
    message: str = Field(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")


class LockState(BaseModel):
    agent: str | None
    expires_at: datetime | None


class ChatResponse(BaseModel):
    reply: str
    agent: str
    device_id: str
    degraded: bool
    lock: LockState


class Queued(BaseModel):
    status: str = "queued"
    device_id: str
    message: str


def web_device_id(value: str | None, settings: Settings) -> str:
    """The X-Device-ID header as a canonical UUID; 400 when missing or malformed, 401 when unsigned."""
    if value is None or not value.strip():
        raise ApiError(400, "missing_device_id", "the X-Device-ID header is required")
    value = value.strip()
    secret = settings.device_id_secret.get_secret_value() if settings.device_id_secret else ""
    if not secret:
        device_uuid = devices.parse_uuid(value)
        if device_uuid is None:
            raise ApiError(400, "invalid_device_id", "X-Device-ID must be a UUID")
        return device_uuid
    device_uuid = devices.verify(secret, value)
    if device_uuid is None:
        security.warning("refused a device id with a missing or wrong signature")
        raise ApiError(401, "invalid_device_signature", "X-Device-ID must be a device id issued by POST /api/devices")
    return device_uuid


def request_tenant(value: str | None) -> str:
    if value is None:
        return "default"
    try:
        return validation.tenant_id(value)
    except InvalidInput as err:
        raise ApiError(400, err.code, str(err)) from None


def idempotency_external_id(device_id: str, key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable characters")
    return f"web:{device_id}:{key}"


def chat_response(device_id: str, result: Result) -> ChatResponse:
    return ChatResponse(
        reply=result.reply or "",
        agent=result.agent or "manager",
        device_id=device_id,
        degraded=result.degraded,
        lock=LockState(agent=result.lock_agent, expires_at=result.lock_expires_at),
    )


class NewSession(BaseModel):
    session_id: str


class Device(BaseModel):
    device_id: str


@router.post("/api/devices", status_code=201, response_model=Device)
def new_device(settings: AppSettings) -> Device:
    """Issue a device id for a new web chat client (signed when DEVICE_ID_SECRET is set)."""
    secret = settings.device_id_secret.get_secret_value() if settings.device_id_secret else None
    return Device(device_id=devices.issue(secret))


@router.post("/api/chat/new", status_code=201, response_model=NewSession, responses={400: {}, 401: {}})
def new_chat(
    sessions: Sessions,
    settings: AppSettings,
    x_device_id: Annotated[str | None, Header()] = None,
    x_tenant_id: Annotated[str | None, Header()] = None,
) -> NewSession:
    """Start a new conversation (the "New conversation" button): fresh context, lock released."""
    device_id = web_device_id(x_device_id, settings)
    return NewSession(session_id=sessions.start_new_session(device_id, tenant_id=request_tenant(x_tenant_id)))


@router.post(
    "/api/chat",
    response_model=ChatResponse,
    responses={202: {"model": Queued}, 400: {}, 401: {}, 413: {}, 422: {}},
)
def chat(
    body: ChatRequest,
    pipeline: Pipe,
    settings: AppSettings,
    x_device_id: Annotated[str | None, Header()] = None,
    x_tenant_id: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> ChatResponse | JSONResponse:
    device_id = web_device_id(x_device_id, settings)
    tenant_id = request_tenant(x_tenant_id)
    external_id = idempotency_external_id(device_id, idempotency_key)
    inbound = Inbound(tenant_id, device_id, body.message, external_id, {"channel": "web"})
    result = pipeline.handle(inbound)
    if result.status == "queued":
        queued = Queued(
            device_id=device_id,
            message="your message is stored and will be answered in order; "
            "retry with the same Idempotency-Key to get the reply",
        )
        return JSONResponse(queued.model_dump(), status_code=202)
    return chat_response(device_id, result)

"""GET and POST /api/webhooks/whatsapp: the WhatsApp Cloud API webhook."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from app.api.deps import AppSettings, Pipe, Received, WhatsApp
from app.api.errors import ApiError
from app.channels.whatsapp import handle_delivery

# Refused webhook calls go to their own logger, so they can be routed to security monitoring.
security = logging.getLogger("app.security")
router = APIRouter(tags=["whatsapp"])
PATH = "/api/webhooks/whatsapp"
MAX_CHALLENGE = 256


class Ack(BaseModel):
    status: str = "ok"
    stored: int
    duplicates: int
    ignored: int


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.get(PATH, response_class=PlainTextResponse, responses={400: {}, 403: {}})
def verify_subscription(
    request: Request,
    settings: AppSettings,
    mode: Annotated[str | None, Query(alias="hub.mode")] = None,
    token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
    challenge: Annotated[str | None, Query(alias="hub.challenge")] = None,
) -> PlainTextResponse:
    expected = settings.whatsapp_verify_token.get_secret_value() if settings.whatsapp_verify_token else ""
    if not expected.strip():
        security.warning("whatsapp verification from %s refused: WHATSAPP_VERIFY_TOKEN is not set", _client(request))
        raise ApiError(403, "forbidden", "webhook verification failed")
    # Compare whatever arrived in constant time, whatever the mode: no timing hint about the token.
    token_ok = hmac.compare_digest((token or "").encode(), expected.encode())
    if mode != "subscribe" or not token_ok:
        reason = "wrong hub.mode" if mode != "subscribe" else "wrong hub.verify_token"
        security.warning("whatsapp verification from %s refused: %s", _client(request), reason)
        raise ApiError(403, "forbidden", "webhook verification failed")
    if not challenge or len(challenge) > MAX_CHALLENGE:
        raise ApiError(400, "invalid_challenge", f"hub.challenge must be 1-{MAX_CHALLENGE} characters")
    return PlainTextResponse(challenge)


async def signed_body(
    request: Request,
    settings: AppSettings,
    x_hub_signature_256: Annotated[str | None, Header()] = None,
) -> bytes:
    """The raw request body, once its X-Hub-Signature-256 proves it came from Meta; else 401."""
    # The HMAC covers the bytes as sent: Meta escapes non-ASCII as \uXXXX, so a
    # re-serialised body would not verify. Read them once and never re-encode.
    body = await request.body()
    secret = settings.whatsapp_app_secret.get_secret_value() if settings.whatsapp_app_secret else ""
    if not secret.strip():
        security.error("whatsapp webhook from %s refused: WHATSAPP_APP_SECRET is not set", _client(request))
        raise ApiError(401, "invalid_signature", "the request signature cannot be verified")
    if not x_hub_signature_256:
        security.warning("whatsapp webhook from %s refused: no X-Hub-Signature-256 header", _client(request))
        raise ApiError(401, "invalid_signature", "the X-Hub-Signature-256 header is required")
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(x_hub_signature_256.strip().lower().encode(), expected.encode()):
        security.warning(
            "whatsapp webhook from %s refused: X-Hub-Signature-256 does not match the body (%s bytes)",
            _client(request),
            len(body),
        )
        raise ApiError(401, "invalid_signature", "the request signature does not match")
    return body


@router.post(PATH, response_model=Ack, responses={400: {}, 401: {}, 413: {}, 503: {}})
async def receive(
    received: Received,
    body: Annotated[bytes, Depends(signed_body)],
    pipeline: Pipe,
    settings: AppSettings,
    sender: WhatsApp,
) -> Ack:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_payload", "the body must be a JSON object")
    # Answered within WEBHOOK_ACK_SECONDS of `received`, every message stored first; a store
    # outage (StoreUnavailable) or no free turn place (Overloaded) is answered 503 with
    # Retry-After, so Meta delivers again. Turns still running go on after the answer.
    report = await handle_delivery(payload, pipeline, sender, settings, received=received)
    return Ack(**report.as_dict())

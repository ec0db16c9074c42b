"""Authentication: admin bearer keys (each belongs to one tenant) and web chat device ids."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header

from app import devices, validation
from app.api.deps import AppSettings
from app.api.errors import ApiError
from app.core.config import Settings
from app.errors import InvalidInput

logger = logging.getLogger(__name__)
security = logging.getLogger("app.security")

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def bearer_token(header: str | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header, or None if absent or malformed."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token.encode()


async def admin_tenant(settings: AppSettings, authorization: Annotated[str | None, Header()] = None) -> str:
    """The tenant whose admin key the request carries; 401 without a valid key."""
    keys = settings.admin_keys  # parsed and checked when Settings was made
    if not keys:
        logger.warning("admin request refused: ADMIN_API_KEYS is not set")
    token = bearer_token(authorization)
    found: str | None = None
    if token is not None:
        # Compare against every key, without stopping at a match, so the time taken
        # does not tell which key (or how much of one) was right.
        for tenant, key in keys:
            if hmac.compare_digest(token, key):
                found = tenant
    if found is None:
        raise ApiError(401, "unauthorized", "missing or invalid admin bearer token", UNAUTHORIZED)
    return found


AdminTenant = Annotated[str, Depends(admin_tenant)]


@dataclass(frozen=True)
class DeviceKey:
    """The web chat device a request speaks for, and its tenant."""

    tenant_id: str
    device_id: str


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
    """The X-Tenant-ID header, "default" when absent; 400 when invalid."""
    if value is None:
        return "default"
    try:
        return validation.tenant_id(value)
    except InvalidInput as err:
        raise ApiError(400, err.code, str(err)) from None


async def web_device(
    settings: AppSettings,
    x_device_id: Annotated[str | None, Header()] = None,
    x_tenant_id: Annotated[str | None, Header()] = None,
) -> DeviceKey:
    """The device of a web chat request (X-Device-ID, signed when DEVICE_ID_SECRET is set; X-Tenant-ID)."""
    device_id = web_device_id(x_device_id, settings)
    return DeviceKey(request_tenant(x_tenant_id), device_id)


WebDevice = Annotated[DeviceKey, Depends(web_device)]

"""Authentication: admin bearer keys (each belongs to one tenant) and web chat device ids."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app import devices, validation
from app.api.deps import AppSettings
from app.api.errors import ApiError
from app.core.config import Settings
from app.errors import InvalidInput

logger = logging.getLogger(__name__)
security = logging.getLogger("app.security")

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


# Bearer schemes as FastAPI declares them, so /docs shows each one with an Authorize
# button; auto_error=False leaves the 401 (and its JSON body) to the checks below.
admin_bearer = HTTPBearer(
    scheme_name="AdminKey", description="An admin key from ADMIN_API_KEYS; it sees only its tenant.", auto_error=False
)
cron_bearer = HTTPBearer(scheme_name="CronSecret", description="The CRON_SECRET.", auto_error=False)
AdminCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(admin_bearer)]
CronCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(cron_bearer)]


async def admin_tenant(settings: AppSettings, credentials: AdminCredentials) -> str:
    """The tenant whose admin key the request carries; 401 without a valid key."""
    keys = settings.admin_keys  # parsed and checked when Settings was made
    if not keys:
        logger.warning("admin request refused: ADMIN_API_KEYS is not set")
    token = credentials.credentials.strip().encode() if credentials else b""
    found: str | None = None
    if token:
        # Compare against every key, without stopping at a match, so the time taken
        # does not tell which key (or how much of one) was right.
        for tenant, key in keys:
            if hmac.compare_digest(token, key):
                found = tenant
    if found is None:
        raise ApiError(401, "unauthorized", "missing or invalid admin bearer token", UNAUTHORIZED)
    return found


async def cron_caller(settings: AppSettings, credentials: CronCredentials) -> None:
    """Let the scheduler's call through when it carries CRON_SECRET; 401 otherwise, and always while unset."""
    expected = settings.cron_secret.get_secret_value().encode() if settings.cron_secret else b""
    if not expected:
        logger.warning("cron request refused: CRON_SECRET is not set")
    token = credentials.credentials.encode() if credentials else b""
    # Constant time: a prefix of the secret takes as long to refuse as a wrong one.
    if not expected or not hmac.compare_digest(token, expected):
        raise ApiError(401, "unauthorized", "missing or invalid bearer token", UNAUTHORIZED)


AdminTenant = Annotated[str, Depends(admin_tenant)]
CronCaller = Depends(cron_caller)


@dataclass(frozen=True)
class DeviceKey:
    """The web chat device a request speaks for, and its tenant."""

    tenant_id: str
    device_id: str


def web_device_id(value: str | None, settings: Settings, tenant: str = devices.DEFAULT_TENANT) -> str:
    """The X-Device-ID header as a canonical UUID; 400 when missing or malformed, 401 when unsigned
    or signed for another tenant."""
    if value is None or not value.strip():
        raise ApiError(400, "missing_device_id", "the X-Device-ID header is required")
    value = value.strip()
    secret = settings.device_id_secret.get_secret_value() if settings.device_id_secret else ""
    if not secret:
        device_uuid = devices.parse_uuid(value)
        if device_uuid is None:
            raise ApiError(400, "invalid_device_id", "X-Device-ID must be a UUID")
        return device_uuid
    device_uuid, verdict = devices.check(secret, tenant, value)
    if device_uuid is None:
        security.warning("refused a device id with a missing or wrong signature (%s)", verdict)
        message = "X-Device-ID must be a device id issued by POST /api/devices for this X-Tenant-ID"
        if verdict == "other_tenant":
            message = (
                "this device id was issued before ids were bound to a tenant and is valid in the "
                "default tenant only; get a new one from POST /api/devices with this X-Tenant-ID"
            )
        raise ApiError(401, "invalid_device_signature", message)
    return device_uuid


def request_tenant(value: str | None, settings: Settings) -> str:
    """The X-Tenant-ID header, "default" when absent; 400 when invalid or not listed in WEB_TENANTS."""
    tenant = devices.DEFAULT_TENANT if value is None else value
    try:
        validation.tenant_id(tenant)
    except InvalidInput as err:
        raise ApiError(400, err.code, str(err)) from None
    if tenant not in settings.web_tenants:
        # Only the configured tenants: a client must not create tenants, or write into one it guessed.
        security.warning("refused a web request for a tenant not in WEB_TENANTS")
        raise ApiError(400, "unknown_tenant", "X-Tenant-ID names no tenant this service accepts")
    return tenant


async def web_tenant(settings: AppSettings, x_tenant_id: Annotated[str | None, Header()] = None) -> str:
    """The tenant of an anonymous web request (X-Tenant-ID, one of WEB_TENANTS; default "default")."""
    return request_tenant(x_tenant_id, settings)


WebTenant = Annotated[str, Depends(web_tenant)]


async def web_device(
    settings: AppSettings,
    x_tenant_id: Annotated[str | None, Header()] = None,
    x_device_id: Annotated[str | None, Header()] = None,
) -> DeviceKey:
    """The device of a web chat request (X-Device-ID, signed for its tenant when DEVICE_ID_SECRET is set),
    and its tenant, checked first (as WebTenant does: one dependency, not two, on every chat request)."""
    tenant = request_tenant(x_tenant_id, settings)
    return DeviceKey(tenant, web_device_id(x_device_id, settings, tenant))


WebDevice = Annotated[DeviceKey, Depends(web_device)]
